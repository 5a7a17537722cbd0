"""What the ``from_pretrained`` of the library's models share (local folders only).

Tensors read from a safetensors file point into the file's buffer, at whatever offset the header
left them (often not a multiple of 64 bytes). Kernels take other code paths on unaligned memory
(e.g. AVX-512 on AMD EPYC), so a loaded model can differ from the saved one in the last bits
although every parameter is bitwise equal. :func:`rehome_tensors` moves a loaded module into
freshly allocated memory, which torch's CPU allocator aligns to 64 bytes, and
:class:`ModelMixin` does so after every ``from_pretrained``.
"""

from __future__ import annotations

import inspect
import json
import os
import types
import typing
from pathlib import Path
from typing import Any

import torch
from diffusers.models.modeling_utils import ModelMixin as DiffusersModelMixin
from safetensors import SafetensorError, safe_open
from torch import Tensor, nn

WEIGHTS_FILE = "diffusion_pytorch_model.safetensors"
"""The weights file ``save_pretrained`` writes (``<name>.index.json`` lists its shards)."""


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
        """Load as diffusers does, then :func:`rehome_tensors` (see the module docstring).

        The folder is checked first (:func:`check_checkpoint_files`), so that a missing or
        truncated weights file or a malformed ``config.json`` is reported by name.
        """
        if pretrained_model_name_or_path is not None and kwargs.get("subfolder") is None:
            check_checkpoint_files(cls, Path(pretrained_model_name_or_path))
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
    saved = read_config(config_file).get("_class_name")
    if saved != class_name:
        raise ValueError(
            f"{str(folder)!r} holds a {saved!r} checkpoint, expected {class_name!r}{other_hint}"
        )


def read_config(path: Path) -> dict[str, Any]:
    """A ``config.json`` as a dict; a file that is not a JSON object is refused by name.

    Raises:
        ValueError: for invalid JSON or a value that is not an object.
    """
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{str(path)!r} is not valid JSON ({error}); restore the file") from None
    except UnicodeDecodeError:
        raise ValueError(f"{str(path)!r} is not a text file; restore the file") from None
    if not isinstance(config, dict):
        raise ValueError(f"{str(path)!r} must hold a JSON object, got {type(config).__name__}")
    return config


def check_checkpoint_files(cls: type, folder: Path) -> None:
    """Refuse a ``save_pretrained`` folder whose files cannot build ``cls``, naming the file.

    Checks that ``config.json`` is a JSON object whose settings have the types ``cls.__init__``
    declares (a number where a number belongs, a list where a tuple belongs, ...), and that the
    weights exist (``diffusion_pytorch_model.safetensors`` or the shards its ``.index.json``
    lists) and that each weights file's header reads (a truncated copy does not).

    Raises:
        FileNotFoundError: for a missing folder, ``config.json`` or weights file.
        ValueError: for a malformed ``config.json``, a setting of the wrong type or a weights
            file that is truncated or not safetensors.
    """
    if not folder.is_dir():
        raise FileNotFoundError(f"no checkpoint folder at {str(folder)!r}")
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(
            f"{str(folder)!r} has no config.json: expected a folder written by save_pretrained"
        )
    _check_config_types(cls, read_config(config_file), config_file)
    index = folder / f"{WEIGHTS_FILE}.index.json"
    if index.is_file():
        shards = sorted(set(read_config(index).get("weight_map", {}).values()))
        files = [folder / name for name in shards]
    else:
        files = [folder / WEIGHTS_FILE]
    for path in files:
        if not path.is_file():
            raise FileNotFoundError(
                f"{str(folder)!r} has a config.json but no weights file {path.name!r}: copy the "
                "whole folder that save_pretrained wrote (the weights are safetensors)"
            )
        try:
            with safe_open(path, framework="pt") as weights:
                weights.keys()
        except SafetensorError as error:
            raise ValueError(
                f"{str(path)!r} is not a complete safetensors file ({error}); it may be truncated: "
                "copy it again from where it was saved"
            ) from None


_KINDS = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def _check_config_types(cls: type, config: dict[str, Any], path: Path) -> None:
    """Raise unless every setting of ``config`` has the type ``cls.__init__`` declares."""
    init = cls.__init__
    try:
        hints = typing.get_type_hints(init)
    except (NameError, TypeError):  # annotations that do not resolve: nothing to check
        return
    for name in inspect.signature(init).parameters:
        if name not in config or name not in hints:
            continue
        value, expected = config[name], hints[name]
        union = typing.get_origin(expected) in (typing.Union, types.UnionType)
        allowed = typing.get_args(expected) if union else (expected,)
        if value is None and type(None) in allowed:
            continue
        if any(_fits(value, kind) for kind in allowed):
            continue
        wanted = " or ".join(_describe(kind) for kind in allowed if kind is not type(None))
        raise ValueError(
            f"{str(path)!r}: {name} must be {wanted}, got {value!r} ({type(value).__name__}); "
            "fix the value or restore the file"
        )


def _fits(value: Any, kind: Any) -> bool:
    origin = typing.get_origin(kind) or kind
    if origin is bool:
        return isinstance(value, bool)
    if origin is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if origin in (tuple, list):
        return isinstance(value, list | tuple)
    if origin is str:
        return isinstance(value, str)
    return True  # other annotations are not checked here


def _describe(kind: Any) -> str:
    origin = typing.get_origin(kind) or kind
    if origin in (tuple, list):
        return "a list"
    return _KINDS.get(origin, getattr(origin, "__name__", str(origin)))
