"""Tiny random-weight checkpoints of the ``{{ cookiecutter._name }}`` family, in its real on-disk format.

The conformance suite (``vlkit.testing.conformance``) and this plugin's tests run on them; no
weights need downloading. The checkpoint is written by transformers itself: the reference class
(``LlavaForConditionalGeneration``, whose layout this family starts from) is built with tiny
sizes and random weights and saved with ``save_pretrained``, so tensor names, config keys and
processor files are exactly what a released checkpoint of that class holds, in whatever
layout the installed transformers writes. Only ``architectures`` is changed, to
``[{{ cookiecutter.architecture | jsonify }}]``, so that vlkit picks this family. When your
model is not LLaVA-shaped, build your own reference class here the same way.

The directory holds ``config.json``, ``model.safetensors`` (or shards with an index), the
tokenizer files (a real fast tokenizer with ``<image>`` as a special token),
``preprocessor_config.json`` (``CLIPImageProcessor``), ``processor_config.json`` and the chat
template. The same options always write the same checkpoint (weights come from ``seed``).
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

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
    :param shards: write the weights as about that many safetensors shards plus an index.
    """
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor
    from vlkit.testing import (
        clip_image_processor_config,
        make_tokenizer,
        random_state_dict,
        tiny_clip_vision_config,
        tiny_llama_config,
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
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(**{k: v for k, v in vision.items() if k != "model_type"}),
        text_config=LlamaConfig(**{k: v for k, v in text.items() if k != "model_type"}),
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        image_seq_length=(image_size // patch_size) ** 2,
        projector_hidden_act="gelu",
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        tie_word_embeddings=False,
    )
    model = LlavaForConditionalGeneration(config).eval()
    state = random_state_dict(model, seed + 2)  # the language model's scale (see random_state_dict)
    for name, module in model.named_modules():  # smaller weights for the tower and projector
        for offset, (part, std) in enumerate((("vision_tower", 0.05), ("multi_modal_projector", 0.1))):
            if name.split(".")[-1] == part:
                state.update({f"{name}.{k}": v for k, v in random_state_dict(module, seed + offset, std=std).items()})
    model.load_state_dict(state)
    size = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    max_shard: int | str = size // shards + 1 if shards else "10GB"
    model.save_pretrained(str(directory), max_shard_size=max_shard)

    cfg_path = directory / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["architectures"] = [ARCHITECTURE]
    cfg_path.write_text(json.dumps(cfg, indent=2))

    from transformers import CLIPImageProcessor

    proc = clip_image_processor_config(image_size)
    image_processor = CLIPImageProcessor(**{k: v for k, v in proc.items() if k != "image_processor_type"})
    LlavaProcessor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=patch_size,
        vision_feature_select_strategy="default", num_additional_image_tokens=1, chat_template=template,
    ).save_pretrained(str(directory))
    return directory
