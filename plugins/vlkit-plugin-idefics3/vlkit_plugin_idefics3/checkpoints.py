"""Tiny random-weight Idefics3 checkpoints in transformers' on-disk format (the conformance kit's input).

:func:`tiny_idefics3` builds a tiny ``Idefics3Config`` (a SigLIP-style vision tower of 48 px
tiles in 8 px patches, ``scale_factor`` 2, so 9 image tokens per tile; a 2-layer LLaMA),
instantiates transformers' ``Idefics3ForConditionalGeneration`` with seeded random weights and
``save_pretrained`` s it, then saves an ``Idefics3Processor`` (``Idefics3ImageProcessor`` +
a byte-level BPE tokenizer carrying Idefics3's special tokens + the chat template) beside it,
so that ``Idefics3Processor.from_pretrained(directory)`` works as for the released checkpoints.

Images are resized to a longest edge of 3 tiles (144 px) and split into up to 3x3 tiles of
48 px plus the global image, so wide, tall and square images tile differently.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

IMAGE_SIZE = 48  # vision tile side (= the processor's max_image_size)
PATCH_SIZE = 8
SCALE_FACTOR = 2
MAX_TILES_PER_SIDE = 3  # the processor's size.longest_edge in tiles
MAX_GRID = 6  # <row_R_col_C> tokens for R, C in 1..6, as the released tokenizers have
TEMPLATE_NAME = "idefics3"

BOS, EOS, PAD = "<|begin_of_text|>", "<|end_of_text|>", "<|finetune_right_pad_id|>"
IMAGE, FAKE, GLOBAL, END_OF_UTTERANCE = "<image>", "<fake_token_around_image>", "<global-img>", "<end_of_utterance>"


def special_tokens() -> list[str]:
    """Idefics3's special tokens, in the order the tiny tokenizer numbers them."""
    grid = [f"<row_{r}_col_{c}>" for r in range(1, MAX_GRID + 1) for c in range(1, MAX_GRID + 1)]
    return [BOS, EOS, PAD, FAKE, IMAGE, END_OF_UTTERANCE, GLOBAL, *grid]


def template() -> str:
    from importlib import resources

    return resources.files("vlkit_plugin_idefics3").joinpath("templates", f"{TEMPLATE_NAME}.jinja").read_text()


def make_idefics3_tokenizer() -> Any:
    """A real fast tokenizer (``vlkit.testing.make_tokenizer``): LLaMA-3-like BOS/EOS/pad names,
    Idefics3's image tokens and ``<end_of_utterance>``; adds BOS like LLaMA-3's."""
    from vlkit.testing import make_tokenizer

    tok = make_tokenizer(special_tokens(), 1000, bos=BOS, eos=EOS, unk=None, pad=PAD, add_bos=True,
                         chat_template=template())
    tok.padding_side = "left"
    return tok


def image_processor_class() -> type:
    """``Idefics3ImageProcessor`` (torchvision backend) when torchvision is installed, else its PIL
    twin ``Idefics3ImageProcessorPil`` (what transformers falls back to, with a warning, by the
    first name). Both save ``"image_processor_type": "Idefics3ImageProcessor"``."""
    import importlib.util

    import transformers

    if importlib.util.find_spec("torchvision") is not None:
        return transformers.Idefics3ImageProcessor
    return transformers.Idefics3ImageProcessorPil


def tiny_idefics3(
    directory: str | Path, *, seed: int = 0, do_image_splitting: bool = True,
    tie_word_embeddings: bool = False, dtype: str = "float32", max_shard_size: str | None = None,
    vision_layers: int = 2,
) -> Path:
    """Write a tiny ``Idefics3ForConditionalGeneration`` checkpoint into ``directory``.

    :param seed: the random weights' seed (the same options always write the same files).
    :param do_image_splitting: the image processor's default (Idefics3-8B splits; off gives
        one tile per image, the processor's short prompt form).
    :param tie_word_embeddings: tie ``lm_head`` to the text embeddings (as SmolVLM's small
        checkpoints do); the checkpoint then carries no ``lm_head.weight``.
    :param max_shard_size: shard the safetensors (e.g. ``"200KB"``).
    """
    import torch
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration, Idefics3Processor

    from vlkit.testing import random_state_dict, tiny_llama_config

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tok = make_idefics3_tokenizer()
    ids = {t: tok.convert_tokens_to_ids(t) for t in (BOS, EOS, PAD, IMAGE, END_OF_UTTERANCE)}
    text = tiny_llama_config(
        vocab_size=len(tok), bos_token_id=ids[BOS], eos_token_id=ids[EOS], pad_token_id=ids[PAD],
        tie_word_embeddings=tie_word_embeddings,
    )
    vision = {
        "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": vision_layers, "num_attention_heads": 4,
        "image_size": IMAGE_SIZE, "patch_size": PATCH_SIZE, "hidden_act": "gelu_pytorch_tanh", "layer_norm_eps": 1e-6,
    }
    config = Idefics3Config(
        vision_config=vision, text_config=text, scale_factor=SCALE_FACTOR, image_token_id=ids[IMAGE],
        tie_word_embeddings=tie_word_embeddings, pad_token_id=ids[PAD],
    )
    config.architectures = ["Idefics3ForConditionalGeneration"]
    torch.manual_seed(seed)
    model = Idefics3ForConditionalGeneration(config)
    model.load_state_dict(random_state_dict(model, seed))
    if tie_word_embeddings:
        model.tie_weights()
    model.eval()
    model.generation_config.eos_token_id = [ids[EOS], ids[END_OF_UTTERANCE]]
    model.generation_config.bos_token_id = ids[BOS]
    model.generation_config.pad_token_id = ids[PAD]
    if dtype != "float32":
        model = model.to(getattr(torch, dtype))
    kwargs: dict[str, Any] = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(str(directory), **kwargs)

    image_seq_len = (IMAGE_SIZE // PATCH_SIZE) ** 2 // SCALE_FACTOR**2
    image_processor = image_processor_class()(
        do_image_splitting=do_image_splitting,
        size={"longest_edge": MAX_TILES_PER_SIDE * IMAGE_SIZE},
        max_image_size={"longest_edge": IMAGE_SIZE},
    )
    processor = Idefics3Processor(image_processor=image_processor, tokenizer=tok, image_seq_len=image_seq_len,
                                  chat_template=template())
    processor.save_pretrained(str(directory))
    return directory
