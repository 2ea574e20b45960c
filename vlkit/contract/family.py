"""What a plugin declares: a :class:`ModelFamily`, with the helpers that fill its fields.

A leaf of the plugin contract: no torch, no other vlkit module, so a plugin's hooks module that
imports it stays cheap for ``vlkit list-models``.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

__all__ = ["RANDOM_WEIGHTS_MARKER", "ModelFamily", "is_random_weight_checkpoint", "lazy_factory", "template_file"]

#: The file a tiny-checkpoint factory leaves in the checkpoint it writes, so that whatever loads it
#: later (``vlkit webui``, ``/v1/models``) can say "random weights" instead of passing noise off as a model.
RANDOM_WEIGHTS_MARKER = "VLKIT_RANDOM_WEIGHTS"


@dataclass(frozen=True)
class ModelFamily:
    """A model family a plugin serves.

    Args:
        name: short unique name (``"llava"``, ``"qwen2-vl"``).
        architectures: the HF ``config.json`` ``architectures`` values it serves.
        chat_templates: template name -> path of a ``.jinja`` file; the first is the default.
        tiny_checkpoint: ``factory(directory, **options) -> Path`` writing a tiny random-weight
            checkpoint of this family in its real on-disk format (the conformance kit uses it).
        description: one line for ``vlkit list-models``.
        priority: breaks ties when two families claim one architecture (higher wins).
        plugin: set by the registry: the entry-point name that registered this family.
    """

    name: str
    architectures: tuple[str, ...]
    chat_templates: dict[str, str] = field(default_factory=dict, hash=False, compare=False)
    tiny_checkpoint: Callable[..., Path] | None = field(default=None, hash=False, compare=False)
    description: str = ""
    priority: int = 0
    plugin: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "architectures", tuple(self.architectures))


def template_file(package: str, name: str) -> str:
    """Path of ``templates/NAME.jinja`` inside the installed ``package`` (a plugin's, or
    ``"vlkit"`` for the core's): the value for :attr:`ModelFamily.chat_templates`."""
    return str(resources.files(package).joinpath("templates", f"{name}.jinja"))


def lazy_factory(target: str) -> Callable[..., Path]:
    """A :attr:`ModelFamily.tiny_checkpoint` that imports ``"module:function"`` only when
    called, so that a plugin's hooks module stays free of torch and transformers imports."""
    module, _, attr = target.partition(":")
    if not module or not attr:
        raise ValueError(f"lazy_factory wants 'module:function', got {target!r}")

    def tiny_checkpoint(directory: str | os.PathLike[str], **options: Any) -> Path:
        path = getattr(importlib.import_module(module), attr)(directory, **options)
        if isinstance(path, (str, os.PathLike)) and Path(path).is_dir():
            (Path(path) / RANDOM_WEIGHTS_MARKER).write_text(
                f"This checkpoint was written by vlkit ({module}.{attr}) with RANDOM weights: "
                "what it generates is noise.\n")
        return path

    tiny_checkpoint.__name__ = tiny_checkpoint.__qualname__ = attr
    tiny_checkpoint.__doc__ = f"Write a tiny random-weight checkpoint ({module}.{attr})."
    return tiny_checkpoint




def is_random_weight_checkpoint(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a checkpoint a tiny-checkpoint factory wrote (random weights)."""
    return (Path(path) / RANDOM_WEIGHTS_MARKER).is_file()
