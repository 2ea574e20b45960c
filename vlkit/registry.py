"""Plugin loading and model-family lookup.

Plugins are distributions with entry points in the group ``vlkit``. Each is imported inside
its own error guard: one that raises is recorded in :func:`failed_plugins` and skipped, and
everything else keeps working. ``VLKIT_LOAD_PLUGINS=a,b`` loads only the named entry points
(an empty value loads none).

A checkpoint is matched to a family by the ``architectures`` of its ``config.json``. When two
families claim one architecture, the higher :attr:`ModelFamily.priority` wins, then the
family name that sorts first; a :class:`VlkitPluginConflictWarning` names both.
"""

from __future__ import annotations

import importlib
import json
import os
import threading
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Any

import pluggy

from vlkit import hookspecs

ENTRY_POINT_GROUP = "vlkit"
_ENV_LOAD = "VLKIT_LOAD_PLUGINS"


class VlkitPluginConflictWarning(UserWarning):
    """Two installed families claim the same architecture."""


class UnknownArchitectureError(ValueError):
    """No installed family (and no core backbone) serves a checkpoint's architecture."""


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
        return getattr(importlib.import_module(module), attr)(directory, **options)

    tiny_checkpoint.__name__ = tiny_checkpoint.__qualname__ = attr
    tiny_checkpoint.__doc__ = f"Write a tiny random-weight checkpoint ({module}.{attr})."
    return tiny_checkpoint


@dataclass(frozen=True)
class PluginInfo:
    """One entry point of the ``vlkit`` group, loaded or not."""

    name: str
    distribution: str | None
    version: str | None
    module: str
    error: str | None = None
    traceback: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "distribution": self.distribution,
            "version": self.version,
            "module": self.module,
            "error": self.error,
        }


class Registry:
    """The loaded plugins and the families they declare."""

    def __init__(self, load_entry_points: bool = True) -> None:
        self.pm = pluggy.PluginManager("vlkit")
        self.pm.add_hookspecs(hookspecs)
        self.plugins: list[PluginInfo] = []
        self._families: list[ModelFamily] | None = None
        self._backbones: dict[str, type] | None = None
        from vlkit import defaults

        self.pm.register(defaults, name="vlkit.defaults")
        if load_entry_points:
            self._load_entry_points()

    # -- loading ---------------------------------------------------------------------------
    def _load_entry_points(self) -> None:
        wanted = _wanted_plugins()
        eps = sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: ep.name)
        seen: set[str] = set()
        for ep in eps:
            if ep.name in seen or (wanted is not None and ep.name not in wanted):
                continue
            seen.add(ep.name)
            self._load_one(ep)

    def _load_one(self, ep: EntryPoint) -> None:
        dist = getattr(ep, "dist", None)
        dist_name = dist.metadata["Name"] if dist is not None else None
        version = dist.version if dist is not None else None
        try:
            obj = ep.load()
            self.pm.register(obj, name=ep.name)
        except BaseException as exc:  # noqa: BLE001 - a plugin must never break the core
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            self.plugins.append(
                PluginInfo(ep.name, dist_name, version, ep.value, _describe(exc), traceback.format_exc())
            )
            return
        self.plugins.append(PluginInfo(ep.name, dist_name, version, ep.value))

    def register(self, obj: Any, name: str) -> None:
        """Register an in-process plugin object (tests, notebooks)."""
        self.pm.register(obj, name=name)
        self.plugins.append(PluginInfo(name, None, None, getattr(obj, "__name__", repr(obj))))
        self._families = None
        self._backbones = None

    # -- families --------------------------------------------------------------------------
    def families(self) -> list[ModelFamily]:
        """All families, sorted by name. A plugin whose hook raises is recorded as failed."""
        if self._families is None:
            found: list[ModelFamily] = []
            for impl in self.pm.hook.vlkit_register_families.get_hookimpls():
                try:
                    result = impl.function() or []
                    for fam in result:
                        if not isinstance(fam, ModelFamily):
                            raise TypeError(f"vlkit_register_families returned {type(fam).__name__}, not ModelFamily")
                        found.append(_with_plugin(fam, impl.plugin_name))
                except Exception as exc:  # noqa: BLE001
                    self._mark_failed(impl.plugin_name, exc)
            self._families = sorted(found, key=lambda f: f.name)
        return list(self._families)

    def _mark_failed(self, plugin_name: str, exc: BaseException) -> None:
        self.pm.unregister(name=plugin_name)
        for i, info in enumerate(self.plugins):
            if info.name == plugin_name:
                self.plugins[i] = PluginInfo(
                    info.name, info.distribution, info.version, info.module, _describe(exc), traceback.format_exc()
                )

    def architecture_table(self) -> dict[str, ModelFamily]:
        """architecture -> the family that serves it, after conflict resolution."""
        table: dict[str, ModelFamily] = {}
        for fam in sorted(self.families(), key=lambda f: (-f.priority, f.name)):
            for arch in fam.architectures:
                if arch in table:
                    winner = table[arch]
                    warnings.warn(
                        f"architecture {arch!r} is claimed by family {winner.name!r} (plugin "
                        f"{winner.plugin!r}, priority {winner.priority}) and family {fam.name!r} "
                        f"(plugin {fam.plugin!r}, priority {fam.priority}); using {winner.name!r}",
                        VlkitPluginConflictWarning,
                        stacklevel=3,
                    )
                    continue
                table[arch] = fam
        return table

    def family_for_architectures(self, architectures: list[str] | tuple[str, ...]) -> ModelFamily | None:
        table = self.architecture_table()
        for arch in architectures:
            if arch in table:
                return table[arch]
        return None

    def get_family(self, name: str) -> ModelFamily:
        for fam in self.families():
            if fam.name == name:
                return fam
        raise KeyError(f"no installed family named {name!r}; installed: {[f.name for f in self.families()]}")

    # -- backbones -------------------------------------------------------------------------
    def language_backbones(self) -> dict[str, type]:
        if self._backbones is None:
            table: dict[str, type] = {}
            for impl in self.pm.hook.vlkit_language_backbones.get_hookimpls():
                try:
                    table.update(impl.function() or {})
                except Exception as exc:  # noqa: BLE001
                    self._mark_failed(impl.plugin_name, exc)
            self._backbones = table
        return dict(self._backbones)

    def failed_plugins(self) -> list[PluginInfo]:
        self.families()
        return [p for p in self.plugins if not p.ok]

    def loaded_plugins(self) -> list[PluginInfo]:
        self.families()
        return [p for p in self.plugins if p.ok]


def _with_plugin(fam: ModelFamily, plugin: str) -> ModelFamily:
    if fam.plugin:
        return fam
    from dataclasses import replace

    return replace(fam, plugin=plugin)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _wanted_plugins() -> set[str] | None:
    value = os.environ.get(_ENV_LOAD)
    if value is None:
        return None
    return {v.strip() for v in value.split(",") if v.strip()}


_registry: Registry | None = None
_lock = threading.Lock()


def get_registry() -> Registry:
    """The process-wide registry, loaded on first use."""
    global _registry
    with _lock:
        if _registry is None:
            _registry = Registry()
        return _registry


def reset_registry() -> None:
    """Forget loaded plugins (tests; after installing a plugin in-process)."""
    global _registry
    with _lock:
        _registry = None


def plugin_manager() -> pluggy.PluginManager:
    return get_registry().pm


def language_backbones() -> dict[str, type]:
    """Backbone classes added by plugins (architecture -> class)."""
    return get_registry().language_backbones()


# -- checkpoint lookup --------------------------------------------------------------------


def resolve_model_path(model: str | os.PathLike[str], *, revision: str | None = None) -> Path:
    """A local directory for ``model``: itself if it is a directory, else a hub download.

    Hub ids are fetched with ``huggingface_hub.snapshot_download`` (weights, configs, tokenizer);
    with ``HF_HUB_OFFLINE=1`` a populated cache is used.
    """
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise ValueError(f"model path {str(model)!r} is a file; give the checkpoint directory")
    if str(model).startswith((".", "/", "~")):
        raise FileNotFoundError(f"model directory {str(model)!r} does not exist")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(str(model), revision=revision))
    except Exception as exc:
        raise FileNotFoundError(
            f"{str(model)!r} is neither a local directory nor a reachable Hugging Face hub id "
            f"({type(exc).__name__}: {exc})"
        ) from exc


def read_config(model_path: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``config.json`` of a local checkpoint directory or a hub id (only that file is fetched)."""
    path = Path(model_path).expanduser()
    if path.is_dir():
        cfg = path / "config.json"
        if not cfg.is_file():
            raise FileNotFoundError(f"{path} has no config.json; is it a model checkpoint?")
        return json.loads(cfg.read_text())
    from huggingface_hub import hf_hub_download

    try:
        return json.loads(Path(hf_hub_download(str(model_path), "config.json")).read_text())
    except Exception as exc:
        raise FileNotFoundError(
            f"cannot read config.json of {str(model_path)!r}: not a local directory, and the hub "
            f"answered {type(exc).__name__}: {exc}"
        ) from exc


def find_family(model_or_config: str | os.PathLike[str] | dict[str, Any]) -> ModelFamily:
    """The family serving a checkpoint, by its ``config.json`` ``architectures``.

    :raises UnknownArchitectureError: listing the installed families and their architectures.
    """
    config = model_or_config if isinstance(model_or_config, dict) else read_config(model_or_config)
    archs = list(config.get("architectures") or [])
    reg = get_registry()
    fam = reg.family_for_architectures(archs)
    if fam is None:
        raise UnknownArchitectureError(unknown_architecture_message(archs, reg))
    return fam


def unknown_architecture_message(archs: list[str], reg: Registry | None = None) -> str:
    reg = reg or get_registry()
    lines = [f"no installed vlkit family serves architectures {archs or '(none in config.json)'}."]
    fams = reg.families()
    if fams:
        lines.append("Installed families:")
        lines += [f"  {f.name} ({f.plugin}): {', '.join(f.architectures)}" for f in fams]
    else:
        lines.append("No model-family plugin is installed.")
    hint = _install_hint(archs)
    if hint:
        lines.append(f"Install it with: pip install {hint}")
    else:
        lines.append("Install the plugin for this family (see `vlkit list-models`), or write one with `vlkit scaffold`.")
    failed = reg.failed_plugins()
    if failed:
        lines.append("Plugins that failed to load: " + "; ".join(f"{p.name}: {p.error}" for p in failed))
    return "\n".join(lines)


_KNOWN_PLUGINS = {
    "vlkit-plugin-llava": ("LlavaForConditionalGeneration", "LlavaNextForConditionalGeneration", "LlavaLlamaForCausalLM"),
    "vlkit-plugin-qwen": ("QWenLMHeadModel", "Qwen2VLForConditionalGeneration", "Qwen2_5_VLForConditionalGeneration"),
    "vlkit-plugin-internvl": ("InternVLChatModel", "InternVLForConditionalGeneration"),
    "vlkit-plugin-deepseek": (
        "MultiModalityCausalLM",
        "DeepseekVLForConditionalGeneration",
        "DeepseekVLHybridForConditionalGeneration",
    ),
    "vlkit-plugin-mobilevlm": ("MobileLlamaForCausalLM",),
}


def _install_hint(archs: list[str]) -> str | None:
    for dist, served in _KNOWN_PLUGINS.items():
        if any(a in served for a in archs):
            return dist
    return None
