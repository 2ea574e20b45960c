"""vlkit hook implementations of the Qwen plugin (the ``vlkit`` entry point).

Families:

* ``qwen2-vl`` — ``Qwen2VLForConditionalGeneration`` (Qwen/Qwen2-VL-2B/7B/72B-Instruct);
* ``qwen2.5-vl`` — ``Qwen2_5_VLForConditionalGeneration`` (Qwen/Qwen2.5-VL-3B/7B/72B-Instruct);
* ``qwen-vl`` — ``QWenLMHeadModel`` with a ``visual`` config section (Qwen/Qwen-VL-Chat): the
  plugin's own ``QWenLMHeadModel`` backbone, tiktoken tokenizer, ViT + resampler.

Qwen2-VL / 2.5-VL: the checkpoint's image processor and chat template, a Qwen2 language model
with M-RoPE (the core's ``Qwen2ForCausalLM`` fed ``[3, T]`` positions).

This module imports no torch and no transformers: model code loads inside the hooks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vlkit.plugin import ModelFamily, hookimpl, lazy_factory, template_file

_PKG = "vlkit_plugin_qwen"
FAMILY_QWEN2_VL = "qwen2-vl"
FAMILY_QWEN2_5_VL = "qwen2.5-vl"
FAMILY_QWEN_VL = "qwen-vl"
ARCH_QWEN2_VL = "Qwen2VLForConditionalGeneration"
ARCH_QWEN2_5_VL = "Qwen2_5_VLForConditionalGeneration"
ARCH_QWEN_VL = "QWenLMHeadModel"
# transformers' default when a config names no sections (Qwen2VLRotaryEmbedding)
DEFAULT_MROPE_SECTION = [16, 24, 24]


@hookimpl
def vlkit_register_families() -> list[ModelFamily]:
    return [
        ModelFamily(
            name=FAMILY_QWEN2_VL,
            architectures=(ARCH_QWEN2_VL,),
            chat_templates={"qwen2-vl": template_file(_PKG, "qwen2-vl")},
            tiny_checkpoint=lazy_factory("vlkit_plugin_qwen.checkpoints:tiny_qwen2_vl"),
            description="Qwen2-VL (Qwen/Qwen2-VL-7B-Instruct): dynamic resolution, M-RoPE",
        ),
        ModelFamily(
            name=FAMILY_QWEN2_5_VL,
            architectures=(ARCH_QWEN2_5_VL,),
            chat_templates={"qwen2-vl": template_file(_PKG, "qwen2-vl")},
            tiny_checkpoint=lazy_factory("vlkit_plugin_qwen.checkpoints:tiny_qwen2_5_vl"),
            description="Qwen2.5-VL (Qwen/Qwen2.5-VL-7B-Instruct): window attention, SwiGLU vision tower, M-RoPE",
        ),
        ModelFamily(
            name=FAMILY_QWEN_VL,
            architectures=(ARCH_QWEN_VL,),
            chat_templates={"qwen-vl-chat": template_file(_PKG, "qwen-vl-chat")},
            tiny_checkpoint=lazy_factory("vlkit_plugin_qwen.checkpoints:tiny_qwen_vl_chat"),
            description="Qwen-VL-Chat (Qwen/Qwen-VL-Chat): 448 px ViT + 256-query resampler, tiktoken, ChatML",
        ),
    ]


@hookimpl
def vlkit_language_backbones() -> dict[str, type]:
    from vlkit_plugin_qwen.qwenvl_lm import QWenLMHeadModel

    return {ARCH_QWEN_VL: QWenLMHeadModel}


@hookimpl
def vlkit_tokenizer(family: Any, hf_config: dict[str, Any], model_path: Path) -> Any:
    if family.name != FAMILY_QWEN_VL:
        return None
    from vlkit_plugin_qwen.qwenvl_tokenizer import VOCAB_FILE, QwenTiktokenTokenizer

    path = Path(model_path) / VOCAB_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{model_path} has no {VOCAB_FILE} (Qwen-VL-Chat's tiktoken vocabulary)")
    return QwenTiktokenTokenizer(path)


@hookimpl
def vlkit_vision_model(family: Any, hf_config: dict[str, Any], model_path: Path, tokenizer: Any) -> Any:
    if family.name == FAMILY_QWEN_VL:
        from vlkit_plugin_qwen.qwenvl_vision import QwenVLChatVisionModel

        return QwenVLChatVisionModel(family, hf_config, model_path, tokenizer)
    from vlkit_plugin_qwen.vision import QwenVLVisionModel

    return QwenVLVisionModel(family, hf_config, model_path, tokenizer)


@hookimpl
def vlkit_chat_template_wrapper(
    family: Any, hf_config: dict[str, Any], model_path: Path, tokenizer: Any, chat_template_config: Any
) -> Any:
    from vlkit_plugin_qwen.chat import Qwen2VLChatTemplate, QwenVLChatTemplate

    cls = QwenVLChatTemplate if family.name == FAMILY_QWEN_VL else Qwen2VLChatTemplate
    return cls(family, hf_config, model_path, tokenizer, chat_template_config)


@hookimpl
def vlkit_language_model_spec(family: Any, hf_config: dict[str, Any], model_path: Path) -> Any:
    if family.name == FAMILY_QWEN_VL:
        return qwen_vl_language_model_spec(hf_config, model_path)
    return qwen2_vl_language_model_spec(hf_config, model_path)


def qwen_vl_language_model_spec(hf_config: dict[str, Any], model_path: Path) -> Any:
    """Qwen-VL-Chat: the plugin's ``QWenLMHeadModel`` on the raw config (``visual`` dropped);
    ``max_position_embeddings`` is ``seq_length`` (dynamic NTK / log-n attention beyond it are
    not implemented), which the engine takes as the default ``session_len``."""
    from vlkit.plugin import LanguageModelSpec

    cfg = {k: v for k, v in hf_config.items() if k != "visual"}
    cfg["max_position_embeddings"] = int(hf_config.get("seq_length") or hf_config.get("max_position_embeddings") or 2048)
    return LanguageModelSpec(architecture=ARCH_QWEN_VL, config=cfg, model_path=str(model_path),
                             exclude_prefixes=("transformer.visual.",))


def text_config(hf_config: dict[str, Any]) -> dict[str, Any]:
    """The Qwen2 text config of a Qwen2-VL / 2.5-VL ``config.json``.

    transformers >= 4.52 nests it under ``text_config``; the released checkpoints (and older
    transformers) keep it flat at the top level beside ``vision_config``. M-RoPE sections come
    from ``rope_scaling`` / ``rope_parameters`` (``{"type": "mrope", "mrope_section": [...]}``),
    transformers' ``[16, 24, 24]`` when absent. Embeddings are tied when the top level or the
    text config says so (as transformers 5 reads pre-v5 saves).
    """
    nested = hf_config.get("text_config")
    if isinstance(nested, dict):
        text = dict(nested)
        for key in ("rope_scaling", "rope_parameters", "rope_theta", "vocab_size", "max_position_embeddings"):
            if key not in text and key in hf_config:
                text[key] = hf_config[key]
    else:
        text = {k: v for k, v in hf_config.items() if k != "vision_config"}
    # transformers 5: the model ties when the top level says so or (pre-v5 saves) the text config does
    text["tie_word_embeddings"] = bool(hf_config.get("tie_word_embeddings") or text.get("tie_word_embeddings"))
    sections = [text.get(k) for k in ("rope_parameters", "rope_scaling") if isinstance(text.get(k), dict)]
    if not any(s.get("mrope_section") for s in sections):
        key = "rope_parameters" if isinstance(text.get("rope_parameters"), dict) else "rope_scaling"
        params = dict(text.get(key) or {"rope_type": "default"})
        params["mrope_section"] = list(DEFAULT_MROPE_SECTION)
        text[key] = params
    text["model_type"] = "qwen2"
    text["architectures"] = ["Qwen2ForCausalLM"]
    return text


def qwen2_vl_language_model_spec(hf_config: dict[str, Any], model_path: Path) -> Any:
    from vlkit.plugin import LanguageModelSpec

    return LanguageModelSpec(
        architecture="Qwen2ForCausalLM",
        config=text_config(hf_config),
        model_path=str(model_path),
        weight_prefixes=(
            ("model.language_model.", "model."),  # transformers 4.52-4.x on save
            ("language_model.model.", "model."),
            ("language_model.lm_head.", "lm_head."),
            ("lm_head.", "lm_head."),
            ("model.", "model."),  # the released checkpoints and transformers 5 on save
        ),
        exclude_prefixes=("model.visual.", "visual."),
    )
