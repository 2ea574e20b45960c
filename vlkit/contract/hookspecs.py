"""The plugin contract: every hook a vlkit plugin may implement.

A plugin is a distribution with an entry point in the group ``vlkit``; the entry point names a
module (or object) holding functions decorated with :data:`hookimpl` (import it, and everything
else a plugin needs, from :mod:`vlkit.plugin`). None of the hooks is required, but a
model-family plugin implements at least :func:`vlkit_register_families`,
:func:`vlkit_vision_model` and :func:`vlkit_chat_template_wrapper`.

**Dispatch by ownership.** The family hooks (:func:`vlkit_tokenizer`,
:func:`vlkit_language_model_spec`, :func:`vlkit_chat_template_wrapper`,
:func:`vlkit_vision_model`) are called only on the plugin that registered the family, then on
the core's fallbacks (:mod:`vlkit.contract.builtin`) if it returned ``None``. A hook never needs
to ask whether a family is its own; a plugin with several families tells them apart by
``family.name``.

**When, in what order, on which thread.** When a pipeline is created, on the thread that
creates it: ``vlkit_register_families`` (once per process, when the registry first loads), then
for the matched family ``vlkit_tokenizer`` → ``vlkit_language_model_spec`` →
``vlkit_chat_template_wrapper`` → ``vlkit_vision_model``. The VisionModel's own methods then run
on the pipeline's engine thread (see :class:`vlkit.contract.vision.VisionModel`).
``vlkit_language_backbones`` is called once per registry, the first time a backbone is looked
up; ``vlkit_register_commands`` when the ``vlkit`` command builds its parser.

Keep the entry-point module light: import torch, transformers and your model code *inside* the
hook functions, so that ``vlkit list-models`` stays fast whatever is installed.

Hooks marked *firstresult* stop at the first implementation that returns something other than
``None``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:  # pragma: no cover
    import argparse
    from pathlib import Path

    from vlkit.config import ChatTemplateConfig
    from vlkit.contract.chat import ChatTemplateWrapper
    from vlkit.contract.family import ModelFamily
    from vlkit.contract.vision import VisionModel
    from vlkit.models.spec import LanguageModelSpec

hookspec = pluggy.HookspecMarker("vlkit")
hookimpl = pluggy.HookimplMarker("vlkit")


@hookspec
def vlkit_register_families() -> list[ModelFamily]:
    """Declare the model families this plugin serves.

    **When:** once per process, when the registry loads plugins (``vlkit list-models``, the first
    pipeline); on the calling thread. Must be cheap: no model code, no torch.

    **Result:** all plugins' lists are merged. A plugin whose hook raises, or returns something
    other than :class:`~vlkit.contract.family.ModelFamily` records, is marked failed (``vlkit
    plugins`` shows the error) and unregistered; the others keep working.

    :return: the families (name, HF ``architectures``, chat templates, tiny-checkpoint factory).
        The registry sets each family's ``plugin`` to this plugin's entry-point name: that is
        what ownership dispatch follows. Two families claiming one architecture are resolved by
        ``ModelFamily.priority`` (higher wins), then by family name, with a
        :class:`~vlkit.contract.registry.VlkitPluginConflictWarning` naming both.
    """


@hookspec(firstresult=True)
def vlkit_tokenizer(
    family: ModelFamily, hf_config: dict[str, Any], model_path: Path, trust_remote_code: bool
) -> Any | None:
    """Load the tokenizer of a checkpoint of ``family``.

    **When:** first of the family hooks, when a pipeline is created; on its thread; only on the
    family's owner. *firstresult*: the core's fallback is
    ``transformers.AutoTokenizer.from_pretrained(model_path)``.

    Implement only when ``AutoTokenizer`` cannot load it (e.g. Qwen-VL-Chat's tiktoken file).

    :param family: the family the checkpoint's ``architectures`` matched (one of this plugin's).
    :param hf_config: the checkpoint's ``config.json`` as a dict.
    :param model_path: local directory of the checkpoint (hub ids are already downloaded).
    :param trust_remote_code: whether the user allowed code shipped with the checkpoint to run
        (``pipeline(trust_remote_code=True)``, ``--trust-remote-code``); ``False`` by default. A
        plugin should load its family's tokenizer with its own code and never need it.
    :return: an object offering ``encode``/``decode``/``convert_tokens_to_ids``, ``__call__``,
        ``eos_token_id``, ``bos_token`` like a transformers tokenizer; or ``None`` for the
        fallback.
    """


@hookspec(firstresult=True)
def vlkit_language_model_spec(
    family: ModelFamily, hf_config: dict[str, Any], model_path: Path
) -> LanguageModelSpec | None:
    """Describe the language model inside a checkpoint of ``family``.

    **When:** after :func:`vlkit_tokenizer`, before the engine is built; on the pipeline's
    creating thread; only on the family's owner. *firstresult*: the core's fallback reads
    ``text_config`` (or ``llm_config``/``language_config``) and maps the ``language_model.``
    prefixes transformers uses.

    :param family: one of this plugin's families.
    :param hf_config: the checkpoint's ``config.json`` as a dict.
    :param model_path: local directory of the checkpoint.
    :return: a :class:`~vlkit.models.spec.LanguageModelSpec` (backbone architecture, its text
        config, where the weights are and how their names map); it must be picklable, since
        tensor-parallel workers rebuild the backbone from it. ``None`` for the fallback.
    """


@hookspec(firstresult=True)
def vlkit_chat_template_wrapper(
    family: ModelFamily,
    hf_config: dict[str, Any],
    model_path: Path,
    tokenizer: Any,
    chat_template_config: ChatTemplateConfig,
) -> ChatTemplateWrapper | None:
    """Build the :class:`~vlkit.contract.chat.ChatTemplateWrapper` for a checkpoint of ``family``.

    **When:** after :func:`vlkit_language_model_spec`; on the pipeline's creating thread; only on
    the family's owner. *firstresult*: the core's fallback is the generic wrapper on the chosen
    or the checkpoint's own template (``<image>`` markers).

    :param family: one of this plugin's families.
    :param hf_config: the checkpoint's ``config.json`` as a dict.
    :param model_path: local directory of the checkpoint.
    :param tokenizer: what :func:`vlkit_tokenizer` gave.
    :param chat_template_config: the user's choice of template and system prompt.
    :return: the wrapper (its ``encode`` then runs on the pipeline's calling threads), or
        ``None`` for the fallback.
    """


@hookspec(firstresult=True)
def vlkit_vision_model(
    family: ModelFamily, hf_config: dict[str, Any], model_path: Path, tokenizer: Any
) -> VisionModel | None:
    """Create the :class:`~vlkit.contract.vision.VisionModel` for a checkpoint of ``family``.

    **When:** last of the family hooks, on the pipeline's creating thread; only on the family's
    owner. *firstresult*; the core has no fallback (a VLM family must answer). Return the object
    unbuilt: the core sets its device and dtype, then calls ``build_preprocessor()`` and
    ``build_model()`` on the engine thread, after the engine has loaded.

    :param family: one of this plugin's families.
    :param hf_config: the checkpoint's ``config.json`` as a dict.
    :param model_path: local directory of the checkpoint.
    :param tokenizer: what :func:`vlkit_tokenizer` gave (for families whose image inputs hold
        token ids).
    :return: the VisionModel, or ``None`` (an error for a vision-language family).
    """


@hookspec
def vlkit_language_backbones() -> dict[str, type]:
    """Add language backbones the core does not ship.

    **When:** once per registry, the first time a backbone is looked up (building a pipeline, or
    matching a text checkpoint); on the calling thread. All plugins' tables are merged; a plugin
    whose hook raises is marked failed.

    :return: backbone architecture name (what :attr:`LanguageModelSpec.architecture` says) ->
        a class implementing :class:`vlkit.models.base.LanguageBackbone`, importable at module
        level (the registry records ``"module:Class"`` in the spec, so tensor-parallel workers
        import it themselves). The core's own backbones win a name clash. Import the classes
        inside this hook.
    """


@hookspec
def vlkit_register_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add sub-commands to the ``vlkit`` CLI.

    **When:** each time the ``vlkit`` command builds its argument parser, before parsing; every
    loaded plugin's implementation is called, in pluggy's order (last registered first).

    :param subparsers: the ``argparse`` sub-parser collection of the ``vlkit`` command; add a
        parser and set ``func=callable(args) -> int`` as its default.
    :return: nothing.
    """
