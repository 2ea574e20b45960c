"""Plugin loading, model-family lookup and dispatch by ownership.

Plugins are distributions with entry points in the group ``vlkit``. Each is imported inside
its own error guard: one that raises is recorded in :func:`failed_plugins` and skipped, and
everything else keeps working. ``VLKIT_LOAD_PLUGINS=a,b`` loads only the named entry points
(an empty value loads none).

A checkpoint is matched to a family by the ``architectures`` of its ``config.json``. When two
families claim one architecture, the higher :attr:`ModelFamily.priority` wins, then the
family name that sorts first; a :class:`VlkitPluginConflictWarning` names both.

**Dispatch by ownership.** The registry records which plugin registered each family, and
:meth:`Registry.build` calls a family's hooks on that plugin alone (pluggy's
``subset_hook_caller``), then on the core's fallbacks (:mod:`vlkit.contract.builtin`). No plugin
is asked about a family it does not own, so no hook needs an "is this family mine?" test.
Plain text checkpoints (an architecture a core or plugin backbone serves, claimed by no
family) belong to the built-in :data:`~vlkit.contract.builtin.TEXT_FAMILY`.
"""

from __future__ import annotations

import json
import os
import threading
import traceback
import warnings
from dataclasses import dataclass, replace
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pluggy

from vlkit.contract import builtin, hookspecs
from vlkit.contract.family import ModelFamily

if TYPE_CHECKING:  # pragma: no cover
    from vlkit.config import ChatTemplateConfig
    from vlkit.contract.chat import ChatTemplateWrapper
    from vlkit.contract.vision import VisionModel
    from vlkit.models.spec import LanguageModelSpec

__all__ = [
    "ModelFamily", "ModelParts", "PluginInfo", "Registry", "UnknownArchitectureError", "VlkitPluginConflictWarning",
    "find_family", "get_registry", "read_config", "reset_registry", "resolve_model_path",
]

ENTRY_POINT_GROUP = "vlkit"
_ENV_LOAD = "VLKIT_LOAD_PLUGINS"


class VlkitPluginConflictWarning(UserWarning):
    """Two installed families claim the same architecture."""


class UnknownArchitectureError(ValueError):
    """No installed family (and no core backbone) serves a checkpoint's architecture."""


@dataclass
class ModelParts:
    """What :meth:`Registry.build` makes of a checkpoint: everything but the engine.

    Args:
        family: the family that serves it (:data:`~vlkit.contract.builtin.TEXT_FAMILY` for a
            plain text checkpoint).
        tokenizer: from the owner's ``vlkit_tokenizer`` or ``AutoTokenizer``.
        spec: the language model, for the engine.
        chat_template: the prompt builder; ``None`` only for a text checkpoint with no template.
        vision: the unbuilt VisionModel (``build_preprocessor``/``build_model`` not called yet);
            ``None`` for a text checkpoint.
    """

    family: ModelFamily
    tokenizer: Any
    spec: LanguageModelSpec
    chat_template: ChatTemplateWrapper | None
    vision: VisionModel | None


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
        self.pm.register(builtin, name=builtin.PLUGIN_NAME)
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

    def family_for_config(self, hf_config: dict[str, Any]) -> ModelFamily:
        """The family serving a checkpoint's ``config.json``: a plugin's, else the built-in text
        family when a backbone serves the architecture.

        :raises UnknownArchitectureError: listing the installed families.
        """
        archs = list(hf_config.get("architectures") or [])
        fam = self.family_for_architectures(archs)
        if fam is not None:
            return fam
        if set(archs) & set(self.text_architectures()):
            return builtin.TEXT_FAMILY
        raise UnknownArchitectureError(unknown_architecture_message(archs, self))

    # -- dispatch by ownership -------------------------------------------------------------
    def owner_hook(self, name: str, family: ModelFamily) -> Any:
        """Hook ``name`` as the family's owner answers it: that plugin's implementation, then
        the core's fallbacks; no other plugin is called."""
        keep = {family.plugin, builtin.PLUGIN_NAME}
        others = [p for n, p in self.pm.list_name_plugin() if n not in keep]
        return self.pm.subset_hook_caller(name, remove_plugins=others)

    def build(
        self, model_path: Path, hf_config: dict[str, Any], chat_template_config: ChatTemplateConfig,
        trust_remote_code: bool = False,
    ) -> ModelParts:
        """Everything a pipeline needs of a checkpoint but the engine, from the owning plugin.

        Calls, in this order and on the caller's thread, ``vlkit_tokenizer``,
        ``vlkit_language_model_spec``, ``vlkit_chat_template_wrapper`` and ``vlkit_vision_model``
        of the family's owner (falling back to the core's defaults).
        """
        family = self.family_for_config(hf_config)

        def call(hook: str, **extra: Any) -> Any:
            return self.owner_hook(hook, family)(family=family, hf_config=hf_config, model_path=model_path, **extra)

        tokenizer = call("vlkit_tokenizer", trust_remote_code=trust_remote_code)
        spec = call("vlkit_language_model_spec")
        if spec is None:
            raise ValueError(f"family {family.name!r} (plugin {family.plugin!r}) gave no language model "
                             f"description for {model_path}")
        spec = self._with_backbone(spec)
        chat_template = call("vlkit_chat_template_wrapper", tokenizer=tokenizer,
                             chat_template_config=chat_template_config)
        vision = call("vlkit_vision_model", tokenizer=tokenizer)
        if family is not builtin.TEXT_FAMILY:
            for what, got in (("ChatTemplateWrapper", chat_template), ("VisionModel", vision)):
                if got is None:
                    raise ValueError(f"plugin {family.plugin!r} returned no {what} for family {family.name!r}")
        return ModelParts(family, tokenizer, spec, chat_template, vision)

    def _with_backbone(self, spec: LanguageModelSpec) -> LanguageModelSpec:
        """Point ``spec`` at a plugin's backbone class when no core backbone has its name, so that
        tensor-parallel workers import it without a registry of their own."""
        from vlkit.models.backbones import BUILTIN_BACKBONES

        if spec.backbone or spec.architecture in BUILTIN_BACKBONES:
            return spec
        cls = self.language_backbones().get(spec.architecture)
        return replace(spec, backbone=f"{cls.__module__}:{cls.__qualname__}") if cls is not None else spec

    def text_architectures(self) -> list[str]:
        """Architectures a language backbone serves: the core's and the plugins'."""
        from vlkit.models.backbones import BUILTIN_BACKBONES

        return sorted(set(BUILTIN_BACKBONES) | set(self.language_backbones()))

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
    """The family as registered: owned by the plugin whose hook declared it."""
    return fam if fam.plugin == plugin else replace(fam, plugin=plugin)


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


# -- checkpoint lookup --------------------------------------------------------------------


#: the files a checkpoint is made of: configs, weights, tokenizer, processor, chat template.
#: Hub downloads fetch only these (not the .bin copy beside the safetensors, onnx exports, images).
HUB_PATTERNS = (
    "*.json", "*.safetensors", "*.jinja", "*.txt", "*.model", "*.tiktoken", "tokenizer*",
)


def resolve_model_path(model: str | os.PathLike[str], *, revision: str | None = None) -> Path:
    """A local directory for ``model``: itself if it is a directory, else a hub download.

    Hub ids are fetched with ``huggingface_hub.snapshot_download`` at ``revision`` (a branch,
    tag or commit), only the files a checkpoint needs (:data:`HUB_PATTERNS`; the ``.bin``
    weights only when the repository has no safetensors). With ``HF_HUB_OFFLINE=1`` only the
    local cache is used, and a model missing from it says so.
    """
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise ValueError(f"model path {str(model)!r} is a file; give the checkpoint directory")
    if str(model).startswith((".", "/", "~")):
        raise FileNotFoundError(f"model directory {str(model)!r} does not exist")
    from huggingface_hub import snapshot_download

    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    where = f"{model}" + (f" at revision {revision!r}" if revision else "")
    try:
        local = Path(snapshot_download(str(model), revision=revision, allow_patterns=list(HUB_PATTERNS)))
        if not any(local.glob("*.safetensors")) and not any(local.glob("*.safetensors.index.json")):
            local = Path(snapshot_download(str(model), revision=revision,
                                           allow_patterns=[*HUB_PATTERNS, "*.bin", "*.pt"]))
        return local
    except Exception as exc:
        if offline:
            raise FileNotFoundError(
                f"{where} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set: download it once "
                "online (or unset HF_HUB_OFFLINE), or give a local checkpoint directory"
            ) from exc
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
    "vlkit-plugin-idefics3": ("Idefics3ForConditionalGeneration",),
}


def _install_hint(archs: list[str]) -> str | None:
    for dist, served in _KNOWN_PLUGINS.items():
        if any(a in served for a in archs):
            return dist
    return None
