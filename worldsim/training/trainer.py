"""Training the world model: VAE stage, stage 1 (backbone), stage 2 (memory blocks).

Stages
    ``vae``: the RGB-D autoencoder alone (reconstruction + ``kl_weight`` x KL), after which the
    latent scale is set to ``1 / std`` of the latents of the first training batch. This is the
    library's documented substitute for a pretrained CogVideoX VAE, which cannot be downloaded
    here; a real one loads with :meth:`worldsim.models.world_model.WorldModel.from_cogvideox`.

    ``backbone`` (paper eq. 3): the transformer without its memory branch learns to predict the
    future chunk from the conditioning frames and the Plücker rays of the chunk's relative poses,
    ``E || v - v_theta(x_t, t, z_ctx, rays) ||^2``. The VAE is frozen.

    ``memory`` (paper eq. 4): the same loss with the map tokens of a
    :class:`~worldsim.memory.Memory` built from the clip's earlier frames; only the memory
    branch (memory blocks, token projection, camera embedding) is trained, everything else is
    frozen. A model that reads its memory as a render (``memory_render``) gets the
    :class:`~worldsim.memory.RenderedMemory` of the clip's earlier and context frames rendered
    into the chunk's cameras instead, and trains its whole transformer in this stage: the render
    enters with the input tokens, so the backbone itself has to learn to carry what it shows to
    the output ("warp what is known, inpaint what is not"). The render's cameras are jittered by
    ``render_pose_noise_m`` / ``render_pose_noise_deg`` so the model tolerates the drift of its
    own poses.

Context noise (``context_noise``): the conditioning latents get Gaussian noise of a standard
deviation drawn uniformly from ``[0, context_noise]`` per clip, so that a model conditioned on
its own imperfect frames in long rollouts has seen such frames in training (DIAMOND, GameNGen).

Camera poses of the chunk come from its actions (free-space motion, as at sampling time), or
from the recorded poses with ``pose_source="recorded"``.

:class:`Trainer` runs a stage with ``accelerate`` (one CPU, one GPU or many), AdamW, a warm-up
learning-rate schedule, an EMA of the trained weights, periodic sample videos, a progress bar and
``metrics.jsonl``, and resumable checkpoints: ``checkpoints/step-XXXXXXXX`` folders written by
``accelerate`` (model weights as safetensors, optimizer, learning-rate schedule, RNG states, EMA)
plus ``trainer_state.json``; each is written under a temporary name and renamed when complete,
so a killed run resumes from the last complete one. At the end the EMA weights are exported with
``WorldModel.save_pretrained`` to ``<output_dir>/model``.

Several processes (``accelerate launch --multi_gpu --num_processes N``; CPU processes over gloo with
``cpu=True``): a step trains on one *global* batch, whatever the number of processes. Every process
iterates the same sequence of global batches and keeps its shard, the rows
``process_index::num_processes`` (the batch size must divide evenly, so that the mean of the shards'
mean losses, which DDP's gradient average gives, is the global batch's mean). Every process holds
the same generator (seeded by ``seed``) and draws the diffusion noise, timesteps and render jitter
for the whole global batch, keeping its shard's rows (:func:`worldsim.training.losses.shard_rows`).
So N processes train as one process on the same global batch does, up to the order in which the
all-reduce sums gradients. The weights, the optimizer, the learning-rate schedule (one step per
optimizer step, as ``split_batches``) and the EMA are the same on every process; only the main
process writes checkpoints (each process adds its RNG state), metrics, samples and the exported
model; the logged loss is the mean over the processes. One exception: the VAE stage samples its
posterior inside the VAE's forward, per shard, so there each process draws from a generator seeded
by a draw of the shared one and its process index: the same distribution as one process, not the
same draw.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, broadcast
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from torch import Tensor
from tqdm.auto import tqdm

from worldsim.simulator.chunks import (
    check_memory_fits,
    insert_clip_memory,
    rollout,
)
from worldsim.simulator.sampler import SamplerConfig

if TYPE_CHECKING:
    from worldsim.memory import Memory
    from worldsim.models.world_model import WorldModel
from worldsim.training.losses import diffusion_loss, latent_std, vae_loss

STAGES = ("vae", "backbone", "memory")
"""Training stages, in the order they are run."""
POSE_SOURCES = ("actions", "recorded")
"""Where the chunk's camera poses come from during training."""


@dataclass(frozen=True)
class TrainConfig:
    """Settings of one training stage.

    Attributes:
        stage: ``"vae"``, ``"backbone"`` (eq. 3) or ``"memory"`` (eq. 4).
        steps: optimizer steps in total (a resumed run continues up to this), >= 1.
        learning_rate: AdamW learning rate, in (0, 1].
        weight_decay: AdamW weight decay, >= 0.
        warmup_steps: linear learning-rate warm-up steps, >= 0.
        grad_clip: gradient-norm clip, > 0.
        ema_decay: EMA decay of the trained weights, in [0, 1).
        kl_weight: weight of the KL term in the VAE stage, >= 0.
        pose_source: ``"actions"`` or ``"recorded"`` (see module docstring).
        checkpoint_every: steps between checkpoints, >= 1.
        keep_checkpoints: most recent checkpoints kept, >= 1.
        sample_every: steps between sample videos, >= 0 (0 = none).
        sample_inference_steps: DDIM steps of sample videos; the default sampler's if None.
        log_every: steps between lines of ``metrics.jsonl``, >= 1.
        mixed_precision: ``"no"``, ``"fp16"`` or ``"bf16"`` (accelerate).
        seed: seed of the noise / timestep / posterior generator (the same on every
            process), >= 0.
        context_noise: largest standard deviation of the noise added to the conditioning
            latents, >= 0 (module docstring; 0 = none).
        render_pose_noise_m: standard deviation of the translation jitter of the render's
            cameras, metres, >= 0.
        render_pose_noise_deg: standard deviation of their yaw jitter, degrees, >= 0.
        max_seconds: wall-clock budget of this run's training, seconds, > 0, or None: when it is
            spent the stage stops early (before ``steps``), writes a checkpoint and exports, as
            if ``steps`` had been reached; a later run with the same settings resumes from there.
    """

    stage: str = "backbone"
    steps: int = 20000
    learning_rate: float = 1e-4
    weight_decay: float = 0.0
    warmup_steps: int = 200
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    kl_weight: float = 1e-6
    pose_source: str = "actions"
    checkpoint_every: int = 1000
    keep_checkpoints: int = 2
    sample_every: int = 2000
    sample_inference_steps: int | None = None
    log_every: int = 10
    mixed_precision: str = "no"
    seed: int = 0
    context_noise: float = 0.0
    render_pose_noise_m: float = 0.02
    render_pose_noise_deg: float = 1.0
    max_seconds: float | None = None

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {self.stage!r}")
        if self.pose_source not in POSE_SOURCES:
            raise ValueError(f"pose_source must be one of {POSE_SOURCES}, got {self.pose_source!r}")
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise ValueError(
                f"mixed_precision must be 'no', 'fp16' or 'bf16', got {self.mixed_precision!r}"
            )
        checks = (
            ("steps", self.steps, self.steps >= 1, ">= 1"),
            ("learning_rate", self.learning_rate, 0 < self.learning_rate <= 1, "in (0, 1]"),
            ("weight_decay", self.weight_decay, self.weight_decay >= 0, ">= 0"),
            ("warmup_steps", self.warmup_steps, self.warmup_steps >= 0, ">= 0"),
            ("grad_clip", self.grad_clip, self.grad_clip > 0, "> 0"),
            ("ema_decay", self.ema_decay, 0 <= self.ema_decay < 1, "in [0, 1)"),
            ("kl_weight", self.kl_weight, self.kl_weight >= 0, ">= 0"),
            ("checkpoint_every", self.checkpoint_every, self.checkpoint_every >= 1, ">= 1"),
            ("keep_checkpoints", self.keep_checkpoints, self.keep_checkpoints >= 1, ">= 1"),
            ("sample_every", self.sample_every, self.sample_every >= 0, ">= 0"),
            ("log_every", self.log_every, self.log_every >= 1, ">= 1"),
            ("seed", self.seed, self.seed >= 0, ">= 0"),
            ("context_noise", self.context_noise, self.context_noise >= 0, ">= 0"),
            (
                "render_pose_noise_m",
                self.render_pose_noise_m,
                self.render_pose_noise_m >= 0,
                ">= 0",
            ),
            (
                "render_pose_noise_deg",
                self.render_pose_noise_deg,
                self.render_pose_noise_deg >= 0,
                ">= 0",
            ),
        )
        for name, value, ok, allowed in checks:
            if not ok:
                raise ValueError(f"{name} must be {allowed}, got {value}")
        if self.max_seconds is not None and not self.max_seconds > 0:
            raise ValueError(f"max_seconds must be > 0 or None, got {self.max_seconds}")
        steps = self.sample_inference_steps
        if steps is not None and steps < 1:
            raise ValueError(f"sample_inference_steps must be >= 1 or None, got {steps}")


def trainable_parameters(model: WorldModel, stage: str) -> list[torch.nn.Parameter]:
    """The parameters a stage trains (see module docstring)."""
    if stage == "vae":
        return list(model.vae.parameters())
    if stage == "backbone":
        return model.transformer.backbone_parameters()
    if stage == "memory":
        if model.transformer.reads_render:  # the render enters at the input: see the docstring
            return list(model.transformer.parameters())
        if not model.transformer.has_memory:
            raise ValueError(
                "stage 'memory' needs a model with memory_token_dim > 0 or memory_render=True"
            )
        return model.transformer.memory_parameters()
    raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")


def freeze_for_stage(model: WorldModel, stage: str) -> list[torch.nn.Parameter]:
    """Set ``requires_grad`` so that only the stage's parameters train; return them."""
    trained = trainable_parameters(model, stage)
    keep = {id(p) for p in trained}
    for parameter in model.parameters():
        parameter.requires_grad_(id(parameter) in keep)
    return trained


def _batches_forever(batches: Iterable[dict[str, Tensor]]) -> Iterator[dict[str, Tensor]]:
    """Cycle over an iterable of batches (re-iterating it, so loaders reshuffle)."""
    while True:
        empty = True
        for batch in batches:
            empty = False
            yield batch
        if empty:
            raise ValueError("the training data yielded no batch")


class Trainer:
    """Runs one training stage of a :class:`~worldsim.models.world_model.WorldModel`.

    Args:
        model: the model; its stage's parameters are trained in place.
        config: the stage's settings.
        output_dir: where checkpoints, samples, metrics and the final model go.
        memory: the memory for stage ``"memory"`` (its own parameters stay frozen).
        cpu: force the CPU even where a GPU exists.
    """

    def __init__(
        self,
        model: WorldModel,
        config: TrainConfig,
        output_dir: str | Path,
        memory: Memory | None = None,
        cpu: bool = False,
    ):
        if config.stage == "memory":
            if memory is None:
                raise ValueError("stage 'memory' needs a memory (e.g. build_memory('feature_map'))")
            check_memory_fits(model, memory)
        elif memory is not None:
            raise ValueError(f"stage {config.stage!r} trains without memory: pass memory=None")
        self.config = config
        self.output_dir = Path(output_dir)
        self.memory = memory
        # split_batches: the batch a step trains on is the global one, split across processes,
        # so the learning-rate schedule takes one step per optimizer step (not num_processes).
        self.accelerator = Accelerator(
            cpu=cpu,
            mixed_precision=config.mixed_precision,
            dataloader_config=DataLoaderConfiguration(split_batches=True),
        )
        trained = freeze_for_stage(model, config.stage)
        if memory is not None:
            memory.requires_grad_(False)
            memory.to(self.accelerator.device)
        optimizer = torch.optim.AdamW(
            trained, lr=config.learning_rate, weight_decay=config.weight_decay
        )
        schedule = get_scheduler(
            "constant_with_warmup", optimizer, num_warmup_steps=config.warmup_steps
        )
        # The VAE stage runs the autoencoder's forward; the others the model's (= predict).
        network = model.vae if config.stage == "vae" else model
        self.world_model = model
        self.network, self.optimizer, self.lr_schedule = self.accelerator.prepare(
            network, optimizer, schedule
        )
        self.trained = trained
        self.ema = EMAModel(trained, decay=config.ema_decay)
        self.ema.to(self.accelerator.device)
        self.accelerator.register_for_checkpointing(self.ema)
        # The same on every process: each draws the global batch's noise and keeps its rows.
        self.generator = torch.Generator().manual_seed(config.seed)
        self.step = 0

    @property
    def shard(self) -> tuple[int, int]:
        """``(process_index, num_processes)`` of this process.

        It trains on the global rows ``process_index::num_processes`` of every batch.
        """
        return self.accelerator.process_index, self.accelerator.num_processes

    def shard_batch(self, batch: dict[str, Any]) -> dict[str, Any]:
        """This process's rows of a global batch (the batch itself on one process).

        Args:
            batch: a global batch; tensors and lists have the clips along their first axis.

        Returns:
            The rows ``process_index::num_processes`` of every tensor and list.

        Raises:
            ValueError: if the batch's size is not a multiple of the number of processes.
        """
        index, count = self.shard
        if count == 1:
            return batch
        size = len(batch["rgb"])
        if size % count:
            raise ValueError(
                f"a global batch of {size} clips cannot be split evenly across {count} processes: "
                "use a batch size that is a multiple of the number of processes"
            )
        return {k: v[index::count] if isinstance(v, Tensor | list) else v for k, v in batch.items()}

    @property
    def unwrapped(self) -> WorldModel:
        """The model being trained (without accelerate's wrappers)."""
        return self.world_model

    # ----------------------------------------------------------------------------- checkpoints

    @property
    def checkpoint_dir(self) -> Path:
        """Folder holding the ``step-XXXXXXXX`` checkpoints."""
        return self.output_dir / "checkpoints"

    def complete_checkpoints(self) -> list[Path]:
        """Complete checkpoints, oldest first."""
        if not self.checkpoint_dir.is_dir():
            return []
        found = [
            path
            for path in self.checkpoint_dir.glob("step-*")
            if path.is_dir()
            and not path.name.endswith(".tmp")
            and (path / "trainer_state.json").is_file()
        ]
        return sorted(found, key=lambda path: int(path.name.split("-")[1]))

    def save_checkpoint(self) -> Path:
        """Write a checkpoint of the current step atomically; prune old ones."""
        final = self.checkpoint_dir / f"step-{self.step:08d}"
        temporary = final.with_name(final.name + ".tmp")
        # A leftover of a killed run goes first: the other processes write into the folder too.
        if self.accelerator.is_main_process and temporary.exists():
            shutil.rmtree(temporary)
        self.accelerator.wait_for_everyone()
        self.accelerator.save_state(str(temporary), safe_serialization=True)
        # Every process writes its RNG state into the folder: all must be done before the rename.
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            torch.save(self.generator.get_state(), temporary / "generator.pt")
            state = {
                "step": self.step,
                "stage": self.config.stage,
                "model_config": dict(self.unwrapped.config),
            }
            (temporary / "trainer_state.json").write_text(json.dumps(state, indent=1, default=str))
            if final.exists():
                shutil.rmtree(final)
            temporary.rename(final)
            for old in self.complete_checkpoints()[: -self.config.keep_checkpoints]:
                shutil.rmtree(old)
        self.accelerator.wait_for_everyone()
        return final

    def resume(self) -> bool:
        """Load the newest complete checkpoint, if any; return whether one was loaded.

        Raises:
            ValueError: if the checkpoint belongs to another stage or model configuration.
        """
        checkpoints = self.complete_checkpoints()
        if not checkpoints:
            return False
        latest = checkpoints[-1]
        state = json.loads((latest / "trainer_state.json").read_text())
        if state["stage"] != self.config.stage:
            raise ValueError(
                f"checkpoint {str(latest)!r} is of stage {state['stage']!r}, this run trains "
                f"{self.config.stage!r}: use another output_dir"
            )
        current = json.loads(json.dumps(dict(self.unwrapped.config), default=str))
        saved = {k: v for k, v in state["model_config"].items() if not k.startswith("_")}
        differing = sorted(
            key for key in saved if key != "vae_scaling_factor" and saved[key] != current.get(key)
        )
        if differing:
            details = ", ".join(f"{k}: {saved[k]!r} vs {current.get(k)!r}" for k in differing)
            raise ValueError(
                f"checkpoint {str(latest)!r} was written by a model of another configuration "
                f"(checkpoint vs this model: {details})"
            )
        self.accelerator.load_state(str(latest))
        self.ema.to(self.accelerator.device)  # its state is loaded on the CPU
        self.generator.set_state(torch.load(latest / "generator.pt"))
        self.step = int(state["step"])
        scale = state["model_config"].get("vae_scaling_factor")
        if scale is not None:
            self.unwrapped.set_latent_scaling_factor(float(scale))
        return True

    # ----------------------------------------------------------------------------- training

    def loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        """The stage's loss of this process's shard of a batch (already on the device)."""
        if self.config.stage == "vae":
            generator = self.generator
            index, count = self.shard
            if count > 1:  # the posterior is drawn inside the VAE, per shard: see the docstring
                draw = torch.randint(0, 2**62, (1,), generator=self.generator)
                generator = torch.Generator().manual_seed(int(draw) + index)
            return vae_loss(self.world_model, batch, generator, self.config.kl_weight, self.network)
        config = self.config
        loss = diffusion_loss(
            self.world_model,
            batch,
            self.generator,
            self.memory,
            config.pose_source,
            self.network,
            config.context_noise,
            (config.render_pose_noise_m, config.render_pose_noise_deg),
            self.shard,
        )
        return loss, {}

    def fit(
        self, batches: Iterable[dict[str, Tensor]], resume: bool = True
    ) -> list[dict[str, Any]]:
        """Train until ``config.steps`` or ``config.max_seconds``, resuming from a checkpoint.

        Args:
            batches: an iterable of global training batches, cycled (the batch format of
                :func:`worldsim.training.losses.diffusion_loss`); every process must iterate
                the same sequence, and trains on its shard of each (:meth:`shard_batch`).
            resume: look for a checkpoint in ``output_dir`` first.

        Returns:
            The logged metrics (one dict per ``log_every`` steps), the loss averaged over the
            processes.

        Raises:
            ValueError: if a batch's size is not a multiple of the number of processes.
        """
        config = self.config
        if resume:
            self.resume()
        self.output_dir.mkdir(parents=True, exist_ok=True)
        stream = _batches_forever(batches)
        first = None
        history = []
        self.network.train()
        bar = tqdm(
            total=config.steps,
            initial=self.step,
            desc=f"stage {config.stage}",
            disable=not self.accelerator.is_local_main_process,
        )
        started = time.perf_counter()
        while self.step < config.steps:
            # Tensors move to the device; traceability fields (scene ids) stay as they are.
            batch = next(stream)
            shard = self.shard_batch(batch)
            if first is None:  # the global batch, so samples show the same clips on N processes
                first = self._to_device(batch)
            batch = self._to_device(shard)
            with self.accelerator.accumulate(self.network):
                loss, parts = self.loss(batch)
                self.accelerator.backward(self._reaching_every_parameter(loss))
                if self.accelerator.sync_gradients:
                    self.accelerator.clip_grad_norm_(self.trained, config.grad_clip)
                self.optimizer.step()
                self.lr_schedule.step()
                self.optimizer.zero_grad(set_to_none=True)
            self.ema.step(self.trained)
            self.step += 1
            value, parts = self._mean_over_processes(loss, parts)
            if not np.isfinite(value):
                raise FloatingPointError(f"loss became {value} at step {self.step}")
            bar.update(1)
            bar.set_postfix(loss=f"{value:.4f}")
            if self.step % config.log_every == 0 or self.step == config.steps:
                record = {
                    "step": self.step,
                    "loss": value,
                    "lr": self.lr_schedule.get_last_lr()[0],
                    "seconds": time.perf_counter() - started,
                    **parts,
                }
                history.append(record)
                if self.accelerator.is_main_process:
                    with open(self.output_dir / "metrics.jsonl", "a") as log:
                        log.write(json.dumps(record) + "\n")
            if config.sample_every and self.step % config.sample_every == 0:
                self.write_samples(first)
            out_of_time = config.max_seconds is not None and self._main_process_says(
                time.perf_counter() - started >= config.max_seconds
            )
            if self.step % config.checkpoint_every == 0 or self.step == config.steps or out_of_time:
                self.save_checkpoint()
            if out_of_time:
                print(
                    f"stage {config.stage}: time budget of {config.max_seconds:g} s spent at step "
                    f"{self.step} of {config.steps}"
                )
                break
        bar.close()
        if config.stage == "vae" and first is not None:
            self.unwrapped.set_latent_scaling_factor(1.0 / latent_std(self.unwrapped, first))
        self.export()
        return history

    def _reaching_every_parameter(self, loss: Tensor) -> Tensor:
        """``loss`` plus zero times every trained parameter, where that is needed.

        A batch can miss every trained parameter (the memory stage on clips whose memory was
        dropped): its gradient is zero, but backward needs a graph. On several processes a shard
        can miss some or all of them, and DDP waits for every parameter's gradient; zero is the
        shard's true gradient, so the average stays the global batch's.
        """
        if self.accelerator.num_processes == 1 and loss.requires_grad:
            return loss
        return loss + 0.0 * sum(parameter.sum() for parameter in self.trained)

    def _to_device(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Tensors moved to the device; traceability fields (scene ids) as they are."""
        device = self.accelerator.device
        return {k: v.to(device) if isinstance(v, Tensor) else v for k, v in batch.items()}

    def _mean_over_processes(
        self, loss: Tensor, parts: dict[str, float]
    ) -> tuple[float, dict[str, float]]:
        """The loss and its parts averaged over the processes (as they are on one)."""
        if self.accelerator.num_processes == 1:
            return float(loss.detach()), parts
        values = torch.tensor([float(loss.detach()), *parts.values()], dtype=torch.float64)
        values = self.accelerator.reduce(values.to(self.accelerator.device), "mean").cpu()
        return float(values[0]), dict(zip(parts, values[1:].tolist(), strict=True))

    def _main_process_says(self, decision: bool) -> bool:
        """The main process's ``decision`` on every process (so that all stop together)."""
        if self.accelerator.num_processes == 1:
            return decision
        flag = torch.tensor([int(decision)], device=self.accelerator.device)
        return bool(broadcast(flag, from_process=0).item())

    def export(self) -> Path:
        """Save the model with its EMA weights to ``<output_dir>/model`` and return the path.

        The main process writes; every process returns once the folder is complete.
        """
        folder = self.output_dir / "model"
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            self.ema.store(self.trained)
            self.ema.copy_to(self.trained)
            self.unwrapped.save_pretrained(folder, max_shard_size="40MB")
            self.ema.restore(self.trained)
        self.accelerator.wait_for_everyone()
        return folder

    @torch.no_grad()
    def write_samples(self, batch: dict[str, Tensor], max_rollouts: int = 2) -> Path | None:
        """Write a video (or reconstruction) of the first clips of ``batch`` to ``samples/``.

        Each frame shows, left to right: true RGB, generated RGB, true depth, generated depth
        (depth scaled by ``max_depth_m``).
        """
        if not self.accelerator.is_main_process:
            return None
        import imageio.v3 as iio

        model = self.unwrapped
        was_training = model.training
        model.eval()
        n_context = model.config.n_context
        clip = {k: v[:max_rollouts] for k, v in batch.items()}
        if self.config.stage == "vae":
            depth = clip["depth"] if model.config.use_depth else None
            rgb, predicted_depth = model.decode(model.encode(clip["rgb"], depth))
            truth_rgb, truth_depth = clip["rgb"], clip["depth"]
        else:
            memory = None
            if self.config.stage == "memory":
                memory = insert_clip_memory(self.memory, clip, self.accelerator.device)
            result = rollout(
                model,
                clip["rgb"][:, :n_context],
                clip["depth"][:, :n_context],
                clip["cam_to_world"][:, :n_context],
                clip["actions"][:, n_context - 1 :][:, : model.config.n_future],
                sampler=SamplerConfig().with_steps(self.config.sample_inference_steps),
                intrinsics=clip["intrinsics"][:, 0],
                memory=memory,
                generator=torch.Generator().manual_seed(self.config.seed),
            )
            rgb, predicted_depth = result.rgb, result.depth
            truth_rgb, truth_depth = clip["rgb"][:, n_context:], clip["depth"][:, n_context:]
        scale = model.config.max_depth_m
        panels = [truth_rgb, rgb]
        if predicted_depth is not None:
            panels += [
                (truth_depth / scale).expand_as(truth_rgb),
                (predicted_depth / scale).expand_as(rgb),
            ]
        video = torch.cat(panels, dim=-1)  # (B, T, 3, H, k*W)
        video = torch.cat(list(video), dim=-2)  # (T, 3, B*H, k*W)
        frames = (video.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy()
        path = self.output_dir / "samples" / f"{self.config.stage}-step-{self.step:08d}.gif"
        path.parent.mkdir(parents=True, exist_ok=True)
        iio.imwrite(path, frames, duration=250, loop=0)
        model.train(was_training)
        return path
