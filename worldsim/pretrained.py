"""Checks shared by the ``from_pretrained`` of the library's models (local folders only)."""

from __future__ import annotations

import json
from pathlib import Path


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
