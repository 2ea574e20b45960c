"""The plugin contract: every hook a vlkit plugin may implement.

A plugin is a distribution with an entry point in the group ``vlkit``; the entry point names a
module (or object) holding functions decorated with :data:`vlkit.hookimpl`. The core calls the
hooks below; none of them is required, but a model-family plugin implements at least
:func:`vlkit_register_families`, :func:`vlkit_vision_model` and
:func:`vlkit_chat_template_wrapper`.

Keep the entry-point module light: import torch, transformers and your model code *inside*
the hook functions, so that ``vlkit list-models`` stays fast whatever is installed.

Hooks marked *firstresult* stop at the first implementation that returns something other than
``None``; a plugin returns ``None`` for families that are not its own. The order is pluggy's
(last registered first), so the answer must not depend on it: only the plugin that owns a
family answers for it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:  # pragma: no cover
    import argparse
    from pathlib import Path

    from vlkit.chat import ChatTemplateWrapper
    from vlkit.config import ChatTemplateConfig, VisionConfig
    from vlkit.models.spec import LanguageModelSpec
    from vlkit.registry import ModelFamily
    from vlkit.vision import VisionModel

hookspec = pluggy.HookspecMarker("vlkit")
hookimpl = pluggy.HookimplMarker("vlkit")


@hookspec
def vlkit_register_families() -> list[ModelFamily]:
    """Declare the model families this plugin serves.

    Called once per process, when the registry loads plugins. Must be cheap: no model code,
    no torch.

    :return: a list of :class:`vlkit.registry.ModelFamily` (name, HF ``architectures``, chat
        templates, tiny-checkpoint factory). The results of all plugins are merged; two
        families claiming one architecture are resolved by ``ModelFamily.priority`` (higher
        wins), then by family name, with a warning naming both (see
        :func:`vlkit.registry.find_family`).
    """


@hookspec(firstresult=True)
def vlkit_vision_model(
    family: ModelFamily, hf_config: dict[str, Any], model_path: Path, vision_config: VisionConfig
) -> VisionModel | None:
    """Build the :class:`vlkit.vision.VisionModel` for a checkpoint of ``family``.

    :param family: the family :func:`vlkit.registry.find_family` matched.
    :param hf_config: the checkpoint's ``config.json`` as a dict.
    :param model_path: local directory of the checkpoint (hub ids are already downloaded).
    :param vision_config: the user's :class:`vlkit.config.VisionConfig`.
    :return: an (unbuilt) VisionModel; the core calls ``build_preprocessor()`` and
        ``build_model()`` on it. ``None`` when ``family`` is not this plugin's.

    *firstresult*.
    """


@hookspec(firstresult=True)
def vlkit_chat_template_wrapper(
    family: ModelFamily,
    hf_config: dict[str, Any],
    model_path: Path,
    tokenizer: Any,
    chat_template_config: ChatTemplateConfig,
) -> ChatTemplateWrapper | None:
    """Build the :class:`vlkit.chat.ChatTemplateWrapper` for a checkpoint of ``family``.

    :param tokenizer: the tokenizer the core loaded (see :func:`vlkit_tokenizer`).
    :param chat_template_config: the user's choice of template and system prompt.
    :return: the wrapper, or ``None`` when ``family`` is not this plugin's.

    *firstresult*.
    """


@hookspec(firstresult=True)
def vlkit_language_model_spec(
    family: ModelFamily, hf_config: dict[str, Any], model_path: Path
) -> LanguageModelSpec | None:
    """Describe the language model inside a checkpoint of ``family``.

    :return: a :class:`vlkit.models.spec.LanguageModelSpec` (backbone architecture, its text
        config, where the weights are and how their names map), or ``None`` to let the core's
        default answer: it reads ``text_config`` (or ``llm_config``/``language_config``) and
        maps the ``language_model.`` prefixes transformers uses.

    *firstresult*. The core's default implementation runs last.
    """


@hookspec(firstresult=True)
def vlkit_tokenizer(family: ModelFamily, hf_config: dict[str, Any], model_path: Path) -> Any | None:
    """Load the tokenizer of a checkpoint of ``family``.

    Implement only when ``transformers.AutoTokenizer`` cannot load it (e.g. Qwen-VL-Chat's
    tiktoken file). The object must offer ``encode``/``decode``/``convert_ids_to_tokens``,
    ``eos_token_id``, ``bos_token`` like a transformers tokenizer.

    :return: the tokenizer, or ``None`` to use ``AutoTokenizer.from_pretrained(model_path)``.

    *firstresult*.
    """


@hookspec
def vlkit_language_backbones() -> dict[str, type]:
    """Add language backbones the core does not ship.

    :return: a mapping from backbone architecture name (what
        :attr:`LanguageModelSpec.architecture` says) to a class implementing
        :class:`vlkit.models.base.LanguageBackbone`. The core's own backbones win a name clash.
        Return classes lazily imported inside this hook.
    """


@hookspec
def vlkit_register_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add sub-commands to the ``vlkit`` CLI.

    :param subparsers: the ``argparse`` sub-parser collection of the ``vlkit`` command; add a
        parser and set ``func=callable(args) -> int`` as its default.
    """
