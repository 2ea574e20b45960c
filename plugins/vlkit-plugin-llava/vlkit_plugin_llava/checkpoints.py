"""Tiny random-weight LLaVA checkpoints in their real on-disk formats (the conformance kit's input).

* :func:`tiny_llava` — transformers' ``LlavaForConditionalGeneration`` (as llava-hf/llava-1.5-*-hf):
  ``config.json``, ``model.safetensors``, tokenizer files with ``<image>`` and ``<pad>``,
  ``preprocessor_config.json`` (``CLIPImageProcessor``), processor config and chat template.
* :func:`tiny_llava_next` — ``LlavaNextForConditionalGeneration`` + ``LlavaNextProcessor`` with
  small ``image_grid_pinpoints`` so different aspect ratios tile differently.
* :func:`tiny_llava_original` — liuhaotian's ``LlavaLlamaForCausalLM`` layout written from the
  SAME weights as a transformers twin: ``model.*`` LLaMA, ``model.mm_projector.{0,2}``,
  ``lm_head``, ``model.image_newline`` (1.6); the CLIP tower as a standalone
  ``CLIPVisionModel`` directory named by an absolute path in ``mm_vision_tower``. Version
  "1.6" also stores the (fine-tuned) tower inside the checkpoint as the released 1.6
  checkpoints do, while the standalone directory holds *different* (pre-fine-tuning) weights.

``size="w1"`` gives BENCH.md's W1 ``llava-60m`` dimensions, ``size="w5"`` a real small LLaVA's
(CLIP ViT-L/14-336 and TinyLlama-1.1B's LM; write it with ``dtype="bfloat16"``). Weights come from a fixed seed:
the same options always write the same checkpoint.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

SIZES: dict[str, dict[str, Any]] = {
    "tiny": {
        "vision": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 3, "num_attention_heads": 4},
        "text": {
            "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 2,
        },
        "image_size": 56,
        "next_image_size": 42,
        "vocab_size": None,  # = the tokenizer's length
    },
    "w1": {
        "vision": {"hidden_size": 256, "intermediate_size": 1024, "num_hidden_layers": 4, "num_attention_heads": 4},
        "text": {
            "hidden_size": 512, "intermediate_size": 1408, "num_hidden_layers": 8, "num_attention_heads": 8,
            "num_key_value_heads": 4,
        },
        "image_size": 224,
        "next_image_size": 224,
        "vocab_size": 32000,
    },
    # W5: the shapes of a real small LLaVA-1.5 (TinyLLaVA-style): CLIP ViT-L/14 at 336 px
    # (576 image tokens) and TinyLlama-1.1B's LM; ~1.4 B parameters
    "w5": {
        "vision": {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24, "num_attention_heads": 16},
        "text": {
            "hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 22, "num_attention_heads": 32,
            "num_key_value_heads": 4,
        },
        "image_size": 336,
        "next_image_size": 336,
        "vocab_size": 32000,
    },
    # llava-1.5-7b's shapes (CLIP ViT-L/14-336 and LLaMA-7B / Vicuna-7B), for ``vlkit bench gpu``:
    # ~7.1 B parameters, 14 GB in bf16; build it with ``device="cuda"`` (seconds, not the CPU's minutes)
    "7b": {
        "vision": {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24, "num_attention_heads": 16},
        "text": {
            "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32,
            "num_key_value_heads": 32,
        },
        "image_size": 336,
        "next_image_size": 336,
        "vocab_size": 32000,
    },
}
PATCH_SIZE = 14

_CORPUS = """
A chat between a curious human and an artificial intelligence assistant. The assistant gives
helpful, detailed, and polite answers to the human's questions. USER: ASSISTANT: user assistant
system. What is in this image? Describe the picture in detail. What color is the cat? How many
people are there? Where was this photo taken? Compare the two images. What is she doing? The
image shows a tiger lying on the grass next to a tree, with a blue sky and white clouds above.
There are three red apples on a wooden table. A dog runs across the green field in the sun.
Is there any text in the image? Read it aloud. Explain why this is funny. Which one is larger?
The first picture is a city street at night; the second is a mountain lake in the morning.
Answer with a single word. Yes. No. Maybe. 0 1 2 3 4 5 6 7 8 9 10 100 2024 one two three four
five, six; seven: eight! nine? ten. (left) [right] {top} "bottom" 'middle' - + = * / % & @ # $
""".split("\n")


def _base_tokenizer(vocab_size: int | None) -> Any:
    """A LLaMA-like byte-fallback BPE (``▁`` for spaces, ``<unk> <s> </s>`` first) as a ``tokenizers.Tokenizer``."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    specials = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, show_progress=False, min_frequency=1
    )
    corpus = [line for line in _CORPUS if line.strip()] * 4
    tok.train_from_iterator(corpus, trainer=trainer)
    if vocab_size is not None:  # fill up with unused pieces to the exact size (minus <image>, <pad>)
        have = tok.get_vocab_size()
        filler = [f"▁unused{i}" for i in range(vocab_size - 2 - have)]
        if filler:
            tok.add_tokens([AddedToken(t, normalized=False, special=False) for t in filler])
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)]
    )
    return tok


def make_tokenizer(vocab_size: int | None = None, image_token: bool = True) -> Any:
    """A fast tokenizer for the tiny checkpoints.

    ``image_token`` adds ``<image>`` and ``<pad>`` after the text vocabulary (as llava-hf's
    tokenizers do); without it the tokenizer is the original LLaVA's (pad = ``<unk>``).
    """
    from tokenizers import AddedToken
    from transformers import PreTrainedTokenizerFast

    base = _base_tokenizer(vocab_size)
    kwargs: dict[str, Any] = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    if image_token:
        base.add_special_tokens([AddedToken("<image>", special=True, normalized=False), AddedToken("<pad>", special=True, normalized=False)])
        kwargs["pad_token"] = "<pad>"
    else:
        kwargs["pad_token"] = "<unk>"
    tok = PreTrainedTokenizerFast(tokenizer_object=base, **kwargs)
    tok.padding_side = "left"
    return tok


def _configs(size: str, image_size: int, vocab: int, seed_text_std: float) -> tuple[Any, Any]:
    from transformers import CLIPVisionConfig, LlamaConfig

    s = SIZES[size]
    vision = CLIPVisionConfig(
        **s["vision"], image_size=image_size, patch_size=PATCH_SIZE, projection_dim=s["vision"]["hidden_size"],
    )
    text = LlamaConfig(
        **s["text"], vocab_size=vocab, max_position_embeddings=4096, rms_norm_eps=1e-5,
        bos_token_id=1, eos_token_id=2, pad_token_id=None, tie_word_embeddings=False,
        initializer_range=seed_text_std,
    )
    return vision, text


def _image_processor(cls_name: str, image_size: int, **extra: Any) -> Any:
    import transformers

    cls = getattr(transformers, cls_name + "Pil", None) or getattr(transformers, cls_name)
    return cls(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}, **extra
    )


def _template(name: str) -> str:
    from importlib import resources

    return resources.files("vlkit_plugin_llava").joinpath("templates", f"{name}.jinja").read_text()


def _save(model: Any, directory: Path, dtype: str, max_shard_size: str | None) -> None:
    import torch

    if dtype != "float32":
        model = model.to(getattr(torch, dtype))
    kwargs: dict[str, Any] = {}
    if max_shard_size:
        kwargs["max_shard_size"] = max_shard_size
    model.save_pretrained(str(directory), **kwargs)


def tiny_llava(
    directory: str | Path, *, seed: int = 0, size: str = "tiny", dtype: str = "float32",
    max_shard_size: str | None = None, text_init_std: float = 0.2,
    vision_feature_layer: int | list[int] = -2, vision_feature_select_strategy: str = "default",
    device: str | None = None,
) -> Path:
    """Write a tiny ``LlavaForConditionalGeneration`` checkpoint (llava-hf/llava-1.5 layout).

    ``vision_feature_layer`` (an index or a list, concatenated) and
    ``vision_feature_select_strategy`` (``"default"`` drops CLS, ``"full"`` keeps it) give
    the variants transformers' LLaVA accepts; llava-1.5 uses -2 and ``"default"``.
    ``device`` builds and initializes the model there, directly in ``dtype`` (a ``"7b"`` on
    ``"cuda"`` takes seconds; the random values then differ from a CPU build's).
    """
    import torch
    from transformers import LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    s = SIZES[size]
    tok = make_tokenizer(s["vocab_size"])
    image_size = s["image_size"]
    vision, text = _configs(size, image_size, s["vocab_size"] or len(tok), text_init_std)
    n_tokens = (image_size // PATCH_SIZE) ** 2
    config = LlavaConfig(
        vision_config=vision.to_dict(), text_config=text.to_dict(),
        image_token_index=tok.convert_tokens_to_ids("<image>"), pad_token_id=tok.pad_token_id,
        vision_feature_layer=vision_feature_layer, vision_feature_select_strategy=vision_feature_select_strategy,
        projector_hidden_act="gelu", image_seq_length=n_tokens, tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    if device is None:
        model = LlavaForConditionalGeneration(config).eval()
    else:
        with torch.device(device):
            model = LlavaForConditionalGeneration._from_config(config, dtype=getattr(torch, dtype)).eval()
    _save(model, directory, dtype, max_shard_size)
    del model
    processor = LlavaProcessor(
        image_processor=_image_processor("CLIPImageProcessor", image_size), tokenizer=tok,
        patch_size=PATCH_SIZE, vision_feature_select_strategy=vision_feature_select_strategy,
        num_additional_image_tokens=1, chat_template=_template("llava-hf"),
    )
    processor.save_pretrained(str(directory))
    return directory


# (rows, cols) in tiles: llava-v1.6's five grids less 3x1, so that the set is not symmetric and
# reading (width, height) pinpoints as (height, width) changes the tiling of some images
NEXT_PINPOINTS_TILES = ((1, 2), (2, 1), (2, 2), (1, 3))


def tiny_llava_next(
    directory: str | Path, *, seed: int = 0, size: str = "tiny", dtype: str = "float32",
    max_shard_size: str | None = None, text_init_std: float = 0.2,
) -> Path:
    """Write a tiny ``LlavaNextForConditionalGeneration`` checkpoint (llava-hf/llava-v1.6 layout).

    ``image_grid_pinpoints`` are llava-v1.6's grids (1x2, 2x1, 2x2, 1x3 tiles; 3x1 left out so
    the set is asymmetric) at the tiny tile size, in transformers' (height, width) order.
    """
    import torch
    from transformers import LlavaNextConfig, LlavaNextForConditionalGeneration, LlavaNextProcessor

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    s = SIZES[size]
    tok = make_tokenizer(s["vocab_size"])
    image_size = s["next_image_size"]
    vision, text = _configs(size, image_size, s["vocab_size"] or len(tok), text_init_std)
    pinpoints = [[r * image_size, c * image_size] for r, c in NEXT_PINPOINTS_TILES]
    config = LlavaNextConfig(
        vision_config=vision.to_dict(), text_config=text.to_dict(),
        image_token_index=tok.convert_tokens_to_ids("<image>"), pad_token_id=tok.pad_token_id,
        vision_feature_layer=-2, vision_feature_select_strategy="default", projector_hidden_act="gelu",
        image_grid_pinpoints=pinpoints, image_seq_length=(image_size // PATCH_SIZE) ** 2, tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlavaNextForConditionalGeneration(config).eval()
    _save(model, directory, dtype, max_shard_size)
    processor = LlavaNextProcessor(
        image_processor=_image_processor("LlavaNextImageProcessor", image_size, image_grid_pinpoints=pinpoints),
        tokenizer=tok, patch_size=PATCH_SIZE, vision_feature_select_strategy="default",
        num_additional_image_tokens=1, chat_template=_template("llava-next-vicuna-hf"),
    )
    processor.save_pretrained(str(directory))
    return directory


# -- the original layout -------------------------------------------------------------------


def hf_twin_path(original_dir: str | Path) -> Path:
    """Where :func:`tiny_llava_original` writes the transformers twin by default."""
    p = Path(original_dir)
    return p.parent / f"{p.name}-hf"


def clip_tower_path(original_dir: str | Path) -> Path:
    """Where :func:`tiny_llava_original` writes the standalone CLIP tower."""
    p = Path(original_dir)
    return p.parent / f"{p.name}-clip"


_TO_ORIGINAL = (
    (re.compile(r"^model\.language_model\.(.*)$"), r"model.\1"),
    (re.compile(r"^language_model\.model\.(.*)$"), r"model.\1"),
    (re.compile(r"^language_model\.lm_head\.(.*)$"), r"lm_head.\1"),
    (re.compile(r"^lm_head\.(.*)$"), r"lm_head.\1"),
    (re.compile(r"^(?:model\.)?multi_modal_projector\.linear_1\.(.*)$"), r"model.mm_projector.0.\1"),
    (re.compile(r"^(?:model\.)?multi_modal_projector\.linear_2\.(.*)$"), r"model.mm_projector.2.\1"),
    (re.compile(r"^(?:model\.)?image_newline$"), r"model.image_newline"),
)
_TOWER = re.compile(r"^(?:model\.)?vision_tower\.(?:vision_model\.)?(.*)$")


def _split_hf_state(state: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """transformers' LLaVA state dict -> (original-layout tensors, CLIP tower tensors)."""
    main: dict[str, Any] = {}
    tower: dict[str, Any] = {}
    for name, t in state.items():
        m = _TOWER.match(name)
        if m:
            tower[m.group(1)] = t
            continue
        for pat, repl in _TO_ORIGINAL:
            if pat.match(name):
                main[pat.sub(repl, name)] = t
                break
        else:
            raise ValueError(f"unexpected tensor {name!r} in the transformers LLaVA state dict")
    return main, tower


def _write_safetensors(tensors: dict[str, Any], directory: Path, fmt: str, shards: int, dtype: str) -> None:
    import torch

    tensors = {k: v.detach().to(getattr(torch, dtype)).contiguous() for k, v in sorted(tensors.items())}
    names = list(tensors)
    groups = [names[i::shards] for i in range(shards)] if shards > 1 else [names]
    ext = "safetensors" if fmt == "safetensors" else "bin"
    stem = "model" if fmt == "safetensors" else "pytorch_model"
    weight_map: dict[str, str] = {}
    for i, group in enumerate(groups):
        fname = f"{stem}.{ext}" if shards == 1 else f"{stem}-{i + 1:05d}-of-{shards:05d}.{ext}"
        part = {k: tensors[k] for k in group}
        if fmt == "safetensors":
            from safetensors.torch import save_file

            save_file(part, str(directory / fname), metadata={"format": "pt"})
        else:
            torch.save(part, str(directory / fname))
        weight_map.update({k: fname for k in group})
    if shards > 1:
        total = sum(t.numel() * t.element_size() for t in tensors.values())
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (directory / f"{stem}.{ext}.index.json").write_text(json.dumps(index, indent=2))


def _write_clip_tower(tower: dict[str, Any], vision_config: dict[str, Any], image_size: int, path: Path) -> None:
    """A standalone CLIPVisionModel directory as the hub's CLIP checkpoints have (``vision_model.*``)."""
    path.mkdir(parents=True, exist_ok=True)
    cfg = {k: v for k, v in vision_config.items() if k not in ("architectures", "transformers_version", "dtype")}
    cfg.update(architectures=["CLIPVisionModel"], model_type="clip_vision_model", torch_dtype="float32")
    (path / "config.json").write_text(json.dumps(cfg, indent=2))
    _write_safetensors({f"vision_model.{k}": v for k, v in tower.items()}, path, "safetensors", 1, "float32")
    _image_processor("CLIPImageProcessor", image_size).save_pretrained(str(path))


def tiny_llava_original(
    directory: str | Path, *, version: str = "1.5", seed: int = 0, size: str = "tiny",
    hf_checkpoint: str | Path | None = None, fmt: str = "safetensors", shards: int = 1, dtype: str = "float32",
    text_init_std: float = 0.2, llm: str = "llama",
) -> Path:
    """Write the original ``LlavaLlamaForCausalLM`` layout from a transformers twin's weights.

    :param version: ``"1.5"`` (``image_aspect_ratio: pad``, from a ``tiny_llava`` twin) or
        ``"1.6"`` (``anyres`` + ``spatial_unpad``, from a ``tiny_llava_next`` twin).
    :param llm: ``"llama"`` (Vicuna) or ``"mistral"``: ``LlavaMistralForCausalLM``, as
        liuhaotian/llava-v1.6-mistral-7b (the same computation without a sliding window; the
        ``mistral_instruct`` conversation).
    :param hf_checkpoint: the transformers twin to convert; written to :func:`hf_twin_path`
        when not given.
    :param fmt: ``"safetensors"`` or ``"bin"``; ``shards > 1`` writes an index.
    """
    import torch

    if version not in ("1.5", "1.6"):
        raise ValueError(f"version must be '1.5' or '1.6', got {version!r}")
    if llm not in ("llama", "mistral"):
        raise ValueError(f"llm must be 'llama' or 'mistral', got {llm!r}")
    directory = Path(directory).absolute()
    directory.mkdir(parents=True, exist_ok=True)
    twin = Path(hf_checkpoint) if hf_checkpoint is not None else hf_twin_path(directory)
    if hf_checkpoint is None:
        factory = tiny_llava if version == "1.5" else tiny_llava_next
        factory(twin, seed=seed, size=size, text_init_std=text_init_std)
    hf_cfg = json.loads((twin / "config.json").read_text())
    from vlkit.plugin import read_tensors

    state = read_tensors(twin, lambda n: n)
    main, tower = _split_hf_state(state)
    text = dict(hf_cfg["text_config"])
    vision = dict(hf_cfg["vision_config"])
    image_size = int(vision["image_size"])

    tower_dir = clip_tower_path(directory)
    if version == "1.6":
        # the released 1.6 fine-tuned its tower and saved it in the checkpoint; mm_vision_tower
        # names the tower it started from (here: other random weights, to prove which one is used)
        for k, v in tower.items():
            main[f"model.vision_tower.vision_tower.vision_model.{k}"] = v
        gen = torch.Generator().manual_seed(seed + 1000)
        pre = {k: v + 0.05 * torch.randn(v.shape, generator=gen, dtype=v.dtype) for k, v in tower.items()}
        _write_clip_tower(pre, vision, image_size, tower_dir)
    else:
        _write_clip_tower(tower, vision, image_size, tower_dir)
    _write_safetensors(main, directory, fmt, shards, dtype)

    config: dict[str, Any] = {
        "_name_or_path": "./checkpoints/vicuna-v1-5",
        "architectures": ["LlavaLlamaForCausalLM"],
        "model_type": "llava",
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 0,
        "hidden_act": text.get("hidden_act", "silu"),
        "hidden_size": text["hidden_size"],
        "intermediate_size": text["intermediate_size"],
        "num_hidden_layers": text["num_hidden_layers"],
        "num_attention_heads": text["num_attention_heads"],
        "num_key_value_heads": text.get("num_key_value_heads", text["num_attention_heads"]),
        "max_position_embeddings": text.get("max_position_embeddings", 4096),
        "max_length": text.get("max_position_embeddings", 4096),
        "rms_norm_eps": text.get("rms_norm_eps", 1e-5),
        "rope_scaling": None,
        "initializer_range": 0.02,
        "pretraining_tp": 1,
        "tie_word_embeddings": False,
        "use_cache": True,
        "vocab_size": text["vocab_size"],
        "torch_dtype": dtype,
        "transformers_version": "4.31.0",
        "freeze_mm_mlp_adapter": False,
        "tune_mm_mlp_adapter": False,
        "use_mm_proj": True,
        "mm_hidden_size": vision["hidden_size"],
        "mm_projector_type": "mlp2x_gelu",
        "mm_use_im_patch_token": False,
        "mm_use_im_start_end": False,
        "mm_vision_select_feature": "patch",
        "mm_vision_select_layer": -2,
        "mm_vision_tower": str(tower_dir),
        "image_aspect_ratio": "pad",
    }
    rope = text.get("rope_parameters") or {}
    if rope.get("rope_theta", 10000.0) != 10000.0:
        config["rope_theta"] = rope["rope_theta"]
    if version == "1.6":
        pin_hw = hf_cfg["image_grid_pinpoints"]
        config.update({
            "_name_or_path": "lmsys/vicuna-7b-v1.5",
            "image_aspect_ratio": "anyres",
            "image_crop_resolution": image_size,
            "image_split_resolution": image_size,
            "image_grid_pinpoints": [[w, h] for h, w in pin_hw],  # the original writes (width, height)
            "mm_patch_merge_type": "spatial_unpad",
            "mm_projector_lr": None,
            "mm_vision_tower_lr": 2e-06,
            "tokenizer_model_max_length": 4096,
            "tokenizer_padding_side": "right",
            "unfreeze_mm_vision_tower": True,
        })
    if llm == "mistral":
        config.update({"_name_or_path": "mistralai/Mistral-7B-Instruct-v0.2", "architectures": ["LlavaMistralForCausalLM"],
                       "model_type": "llava_mistral", "sliding_window": None})
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    (directory / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0, "max_length": 4096, "transformers_version": "4.31.0"},
        indent=2,
    ))
    s = SIZES[size]
    make_tokenizer(s["vocab_size"], image_token=False).save_pretrained(str(directory))
    return directory
