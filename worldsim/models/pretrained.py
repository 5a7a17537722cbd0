"""What the ``from_pretrained`` of the library's models share (local folders only).

Tensors read from a safetensors file point into the file's buffer, at whatever offset the header
left them (often not a multiple of 64 bytes). Kernels take other code paths on unaligned memory
(e.g. AVX-512 on AMD EPYC), so a loaded model can differ from the saved one in the last bits
although every parameter is bitwise equal. :func:`rehome_tensors` moves a loaded module into
freshly allocated memory, which torch's CPU allocator aligns to 64 bytes, and
:class:`ModelMixin` does so after every ``from_pretrained``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from diffusers.models.modeling_utils import ModelMixin as DiffusersModelMixin
from torch import Tensor, nn


def rehome_tensors(module: nn.Module) -> nn.Module:
    """Move every parameter and buffer of ``module`` into freshly allocated, contiguous memory.

    Keeps dtype, device, ``requires_grad`` and identity (a ``Parameter`` stays the same object,
    so tied weights stay tied; a buffer shared by several submodules stays shared).

    Args:
        module: a model whose tensors may live in a loaded file's buffer.

    Returns:
        ``module``, changed in place.
    """
    with torch.no_grad():
        for parameter in module.parameters():  # deduplicated: a tied weight is moved once
            parameter.data = parameter.data.clone(memory_format=torch.contiguous_format)
        moved: dict[int, Tensor] = {}
        for submodule in module.modules():
            for name, buffer in submodule._buffers.items():
                if buffer is None:
                    continue
                if id(buffer) not in moved:
                    moved[id(buffer)] = buffer.clone(memory_format=torch.contiguous_format)
                submodule._buffers[name] = moved[id(buffer)]
    return module


class ModelMixin(DiffusersModelMixin):
    """diffusers' ``ModelMixin`` whose ``from_pretrained`` returns tensors in fresh memory."""

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path: str | os.PathLike | None, **kwargs: Any
    ) -> ModelMixin:
        """Load as diffusers does, then :func:`rehome_tensors` (see the module docstring)."""
        return rehome_tensors(super().from_pretrained(pretrained_model_name_or_path, **kwargs))

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs: Any) -> None:
        """Save as diffusers does, without the machine-local ``_name_or_path`` in the config.

        diffusers records the folder a model was loaded from; a shipped checkpoint would then
        carry the absolute path of the machine that exported it.
        """
        super().save_pretrained(save_directory, **kwargs)
        config_file = Path(save_directory) / "config.json"
        config = json.loads(config_file.read_text())
        if config.pop("_name_or_path", None) is not None:
            config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def check_pretrained_folder(
    folder: Path, class_name: str, label: str, missing_hint: str, other_hint: str = ""
) -> None:
    """Refuse a folder that is not a ``save_pretrained`` folder of ``class_name``.

    Args:
        folder: the folder.
        class_name: the model class its ``config.json`` must name.
        label: the model's name in messages, e.g. ``"world model"``.
        missing_hint: what to do when ``config.json`` is missing (ends the message).
        other_hint: appended to the message for a checkpoint of another class.

    Raises:
        FileNotFoundError: if the folder or its ``config.json`` is missing.
        ValueError: if the folder holds another kind of model.
    """
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"no {label} checkpoint at {str(folder)!r}: {missing_hint}")
    saved = json.loads(config_file.read_text()).get("_class_name")
    if saved != class_name:
        raise ValueError(
            f"{str(folder)!r} holds a {saved!r} checkpoint, expected {class_name!r}{other_hint}"
        )
