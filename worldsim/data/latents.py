"""VAE latents of every frame of a data set, encoded once and reused by every training step.

Stages 1 and 2 never train the VAE, yet encoding a batch's frames costs as much as the
transformer step on a CPU. A model whose VAE codes frames one by one (temporal ratio 1, see
:mod:`worldsim.models.vae`) gives each frame the same latent whichever clip it is cut from, so the
latents of a whole :class:`~worldsim.data.TrajectoryStore` can be computed once
(:meth:`LatentCache.build`), saved beside the run, and handed to
:class:`~worldsim.data.ClipDataset`, whose clips then carry ``latents`` that
:func:`worldsim.training.losses.diffusion_loss` uses instead of encoding.

A cache belongs to one VAE and one data set: it records a fingerprint of the VAE's weights and
scale (:func:`vae_fingerprint`) and each episode's scene, index and length, and
:meth:`LatentCache.load` refuses a file written for another VAE or another data set.
The latents are the posterior modes times the VAE's scale, stored as float16 (about 4 KB per
64x64 RGB-D frame of the small configuration).
"""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor
from tqdm.auto import tqdm

from worldsim.data import TrajectoryStore, episode_keys, frames_to_tensors
from worldsim.models.world_model import WorldModel

FORMAT = "persistent-world-latents-1"
"""Value of the ``format`` metadata entry of a cache file."""


def vae_fingerprint(model: WorldModel) -> str:
    """SHA-256 of the VAE's weights, its latent scale and the depth switch (hex)."""
    digest = hashlib.sha256()
    digest.update(f"{model.vae.scaling_factor!r} depth={model.config.use_depth}".encode())
    for name, tensor in sorted(model.vae.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()


class LatentCache:
    """Scaled VAE latents of every frame of every episode of a data set.

    Args:
        latents: one (F, C, h, w) tensor per episode of the store, in store order.
        fingerprint: :func:`vae_fingerprint` of the VAE that encoded them.
        episodes: ``scene/episode/frames`` of each episode (checked on load).
    """

    def __init__(self, latents: list[Tensor], fingerprint: str, episodes: list[str]):
        if len(latents) != len(episodes):
            raise ValueError(f"{len(latents)} latent arrays for {len(episodes)} episodes")
        self.latents = latents
        self.fingerprint = fingerprint
        self.episodes = episodes

    @classmethod
    @torch.no_grad()
    def build(
        cls,
        model: WorldModel,
        store: TrajectoryStore,
        batch_frames: int = 256,
        progress: bool = True,
    ) -> LatentCache:
        """Encode every frame of ``store`` with ``model``'s VAE.

        Args:
            model: the world model whose VAE encodes (it must code frames one by one).
            store: the data set.
            batch_frames: frames encoded at once, >= 1.
            progress: show a progress bar over frames.

        Raises:
            ValueError: for a VAE that compresses time (its latents depend on the clip), or
                frames of another size than the model's.
        """
        if not model.vae.per_frame:
            raise ValueError(
                f"the VAE compresses time by {model.vae.temporal_compression}: a frame's latent "
                "depends on its clip, so latents cannot be cached per frame; train without a cache"
            )
        if batch_frames < 1:
            raise ValueError(f"batch_frames must be >= 1, got {batch_frames}")
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        total = sum(info.num_frames for info in store.episodes)
        bar = tqdm(total=total, desc="encoding frames", unit="frame", disable=not progress)
        latents = []
        for index, info in enumerate(store.episodes):
            parts = []
            for start in range(0, info.num_frames, batch_frames):
                stop = min(start + batch_frames, info.num_frames)
                frames = frames_to_tensors(store.read_frames(index, slice(start, stop)))
                rgb = frames["rgb"][None].to(device)
                depth = frames["depth"][None].to(device) if model.config.use_depth else None
                parts.append(model.encode(rgb, depth)[0].to("cpu", torch.float16))
                bar.update(stop - start)
            latents.append(torch.cat(parts))
        bar.close()
        model.train(was_training)
        episodes = episode_keys(store)
        return cls(latents, vae_fingerprint(model), episodes)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the cache to a safetensors file atomically; return its path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(path.name + ".tmp")
        tensors = {f"episode_{i:06d}": latent.contiguous() for i, latent in enumerate(self.latents)}
        metadata = {
            "format": FORMAT,
            "fingerprint": self.fingerprint,
            "episodes": "\n".join(self.episodes),
        }
        save_file(tensors, str(temporary), metadata=metadata)
        os.replace(temporary, path)
        return path

    @classmethod
    def load(
        cls, path: str | os.PathLike, model: WorldModel, store: TrajectoryStore
    ) -> LatentCache:
        """Read a cache written by :meth:`save` for ``model``'s VAE and ``store``.

        Raises:
            FileNotFoundError: no file at ``path``.
            ValueError: a corrupt file, or one written for another VAE or data set.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no latent cache at {path}; build one with LatentCache.build")
        try:
            # The header is checked before ~4 KB per frame of tensors is read.
            with safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata() or {}
                if metadata.get("format") != FORMAT:
                    raise ValueError(f"{path} is not a latent cache of format {FORMAT!r}")
                if metadata["fingerprint"] != vae_fingerprint(model):
                    raise ValueError(
                        f"latent cache {path} was encoded by another VAE (or scale) than this "
                        "model's; delete it to re-encode"
                    )
                episodes = metadata["episodes"].split("\n") if metadata["episodes"] else []
                expected = episode_keys(store)
                if episodes != expected:
                    raise ValueError(
                        f"latent cache {path} holds {len(episodes)} episodes of another data set "
                        f"than {store.root} ({len(expected)} episodes); delete it to re-encode"
                    )
                latents = [handle.get_tensor(f"episode_{i:06d}") for i in range(len(episodes))]
        except (SafetensorError, OSError) as error:
            raise ValueError(f"latent cache {path} is unreadable ({error}); delete it") from None
        return cls(latents, metadata["fingerprint"], episodes)

    @classmethod
    def load_or_build(
        cls,
        path: str | os.PathLike,
        model: WorldModel,
        store: TrajectoryStore,
        progress: bool = True,
    ) -> LatentCache:
        """The cache at ``path`` if it matches ``model`` and ``store``; else build and save it."""
        path = Path(path)
        if path.is_file():
            try:
                return cls.load(path, model, store)
            except ValueError as error:
                warnings.warn(f"re-encoding: {error}", stacklevel=2)
        cache = cls.build(model, store, progress=progress)
        cache.save(path)
        return cache

    def frames(self, episode_index: int, start: int, stop: int) -> Tensor:
        """(stop - start, C, h, w) float32 latents of frames ``start .. stop - 1``."""
        latents = self.latents[episode_index]
        if not 0 <= start < stop <= len(latents):
            raise IndexError(
                f"frames {start}..{stop - 1} outside episode {episode_index}'s {len(latents)}"
            )
        return latents[start:stop].float()
