"""The vlkit hooks of the ``{{ cookiecutter._name }}`` family (this module is the entry point).

vlkit imports this module for ``vlkit list-models`` and every pipeline, so it stays light:
no torch, no transformers, no model code at import time. Each hook imports what it needs
when it runs. Everything comes from ``vlkit.plugin``, vlkit's public plugin API. vlkit calls a
family's hooks only on the plugin that registered the family, so no hook needs to check that
the family is its own; a hook returning ``None`` leaves the step to the core's default.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

from vlkit.plugin import ModelFamily, hookimpl

#: the family name (``vlkit list-models``, ``ModelFamily.name``)
FAMILY = "{{ cookiecutter._name }}"
#: the ``architectures`` value of this family's ``config.json``: how vlkit finds this plugin
ARCHITECTURE = {{ cookiecutter.architecture | jsonify }}
#: the backbone the language half runs on (one the core ships, or one added through
#: ``vlkit_language_backbones``)
BACKBONE = "LlamaForCausalLM"


def template_path(name: str = FAMILY) -> str:
    """Path of one of this plugin's chat templates (``templates/NAME.jinja``)."""
    return str(resources.files(__package__).joinpath("templates", f"{name}.jinja"))


def tiny_checkpoint(directory: str | Path, **options: Any) -> Path:
    """Write a tiny random-weight checkpoint of this family (see :mod:`.checkpoint`)."""
    from {{ cookiecutter.__package }}.checkpoint import write_tiny_checkpoint

    return write_tiny_checkpoint(directory, **options)


@hookimpl
def vlkit_register_families() -> list[ModelFamily]:
    return [
        ModelFamily(
            name=FAMILY,
            architectures=(ARCHITECTURE,),
            chat_templates={FAMILY: template_path()},
            tiny_checkpoint=tiny_checkpoint,
            description={{ cookiecutter.description | jsonify }},
        )
    ]


@hookimpl
def vlkit_vision_model(family: Any, hf_config: dict[str, Any], model_path: Path, tokenizer: Any) -> Any:
    from {{ cookiecutter.__package }}.vision import {{ cookiecutter.__prefix }}VisionModel

    return {{ cookiecutter.__prefix }}VisionModel(family, hf_config, model_path, tokenizer)


@hookimpl
def vlkit_chat_template_wrapper(
    family: Any, hf_config: dict[str, Any], model_path: Path, tokenizer: Any, chat_template_config: Any
) -> Any:
    from {{ cookiecutter.__package }}.chat import {{ cookiecutter.__prefix }}ChatTemplate

    return {{ cookiecutter.__prefix }}ChatTemplate(family, hf_config, model_path, tokenizer, chat_template_config)


@hookimpl
def vlkit_language_model_spec(family: Any, hf_config: dict[str, Any], model_path: Path) -> Any:
    """The language half: a LLaMA whose tensors are stored under ``model.language_model.``.

    Checkpoint names are mapped onto the core's ``LlamaForCausalLM`` names
    (``model.layers.0...``, ``lm_head.weight``); tensors that match no pair (the vision tower
    and the projector) are skipped by the engine's loader.
    """
    from vlkit.plugin import LanguageModelSpec

    text = hf_config.get("text_config")
    if not isinstance(text, dict):
        raise ValueError(f"{model_path}/config.json has no 'text_config' (the {FAMILY} family needs one)")
    text = dict(text)
    text.setdefault("tie_word_embeddings", hf_config.get("tie_word_embeddings", False))
    return LanguageModelSpec(
        architecture=BACKBONE,
        config=text,
        model_path=str(model_path),
        weight_prefixes=(
            ("model.language_model.", "model."),  # transformers >= 4.52 layout
            ("language_model.model.", "model."),  # older transformers layout
            ("language_model.lm_head.", "lm_head."),
            ("lm_head.", "lm_head."),
        ),
    )
