"""Tiny random-weight checkpoints of the ``{{ cookiecutter._name }}`` family, in its real on-disk format.

The conformance suite (``vlkit.testing.conformance``) and this plugin's tests run on them; no
weights need downloading. A checkpoint directory holds what a released one does:

* ``config.json`` -- ``architectures: [{{ cookiecutter.architecture | jsonify }}]``, a CLIP
  ``vision_config``, a LLaMA ``text_config``, the image token id, projector and feature-layer
  settings (keyed as transformers' LLaVA config, ``model_type: llava``, so that
  ``LlavaForConditionalGeneration`` can serve as the reference implementation);
* ``model.safetensors`` (or shards with an index) -- ``model.vision_tower.*``,
  ``model.multi_modal_projector.linear_{1,2}.*``, ``model.language_model.*``, ``lm_head.*``;
* tokenizer files -- a real fast tokenizer with ``<image>`` as a special token;
* ``preprocessor_config.json`` (``CLIPImageProcessor``) and ``processor_config.json``;
* the chat template (``chat_template.jinja`` and in ``tokenizer_config.json``).

The same options always write the same checkpoint (weights come from ``seed``).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

from {{ cookiecutter.__package }}.hooks import ARCHITECTURE, FAMILY

IMAGE_TOKEN = "<image>"


def write_tiny_checkpoint(
    directory: str | Path,
    *,
    seed: int = 0,
    image_size: int = 42,
    patch_size: int = 14,
    vision_hidden_size: int = 32,
    vision_layers: int = 3,
    text_hidden_size: int = 64,
    text_layers: int = 2,
    vocab_size: int = 1000,
    shards: int | None = None,
) -> Path:
    """Write a tiny checkpoint into ``directory`` (created if needed) and return its path.

    :param image_size: the tower's input size; one image becomes
        ``(image_size // patch_size) ** 2`` embeddings.
    :param vocab_size: size the test tokenizer is trained to (the model's vocabulary is the
        tokenizer's length).
    :param shards: write the weights as that many safetensors shards plus an index.
    """
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM
    from vlkit.testing import (
        clip_image_processor_config,
        make_tokenizer,
        random_state_dict,
        save_tokenizer,
        tiny_clip_vision_config,
        tiny_llama_config,
        write_chat_template,
        write_config,
        write_json,
        write_preprocessor_config,
        write_safetensors,
    )

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    template = resources.files("{{ cookiecutter.__package }}").joinpath("templates", f"{FAMILY}.jinja").read_text()

    tokenizer = make_tokenizer(special_tokens=[IMAGE_TOKEN], vocab_size=vocab_size)
    vision = tiny_clip_vision_config(
        hidden_size=vision_hidden_size, intermediate_size=2 * vision_hidden_size, num_layers=vision_layers,
        num_heads=2, image_size=image_size, patch_size=patch_size,
    )
    text = tiny_llama_config(
        hidden_size=text_hidden_size, intermediate_size=2 * text_hidden_size, num_layers=text_layers,
        vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )

    # weights: each part built as its own module, stored under the names this family uses
    tower = CLIPVisionModel(CLIPVisionConfig(**{k: v for k, v in vision.items() if k != "model_type"}))
    projector = torch.nn.Sequential(
        torch.nn.Linear(vision_hidden_size, text_hidden_size), torch.nn.GELU(),
        torch.nn.Linear(text_hidden_size, text_hidden_size),
    )
    language = LlamaForCausalLM(LlamaConfig(**{k: v for k, v in text.items() if k != "model_type"}))
    state: dict[str, Any] = {}
    for name, t in random_state_dict(tower, seed, std=0.05).items():
        state[f"model.vision_tower.{name}"] = t
    proj = random_state_dict(projector, seed + 1, std=0.1)
    for i, layer in ((0, "linear_1"), (2, "linear_2")):
        state[f"model.multi_modal_projector.{layer}.weight"] = proj[f"{i}.weight"]
        state[f"model.multi_modal_projector.{layer}.bias"] = proj[f"{i}.bias"]
    for name, t in random_state_dict(language, seed + 2).items():
        state["model.language_model." + name[len("model."):] if name.startswith("model.") else name] = t
    write_safetensors(directory, state, shards=shards)

    write_config(directory, {
        "architectures": [ARCHITECTURE],
        "model_type": "llava",
        "vision_config": vision,
        "text_config": text,
        "image_token_id": tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        "image_seq_length": (image_size // patch_size) ** 2,
        "projector_hidden_act": "gelu",
        "multimodal_projector_bias": True,
        "vision_feature_layer": -2,
        "vision_feature_select_strategy": "default",
        "tie_word_embeddings": False,
        "dtype": "float32",
    })
    save_tokenizer(tokenizer, directory)
    write_preprocessor_config(directory, clip_image_processor_config(image_size))
    write_json(directory / "processor_config.json", {
        "processor_class": "LlavaProcessor",
        "image_token": IMAGE_TOKEN,
        "patch_size": patch_size,
        "num_additional_image_tokens": 1,
        "vision_feature_select_strategy": "default",
    })
    write_chat_template(directory, template)
    return directory
