"""vlkit.testing: the kit for testing a model family on tiny random-weight checkpoints.

No weights can be downloaded in tests, so every family is tested on tiny checkpoints
written in the real on-disk format (config.json, safetensors, tokenizer files,
preprocessor config, chat template) and compared with the reference implementation
(the transformers class of the same architecture). This package writes those
checkpoints; the conformance suite (``vlkit.testing.conformance``) builds on it.
Everything here is deterministic and sized to run in well under a second on a CPU.

Tokenizers (:mod:`vlkit.testing.tokenizer`)
    ``make_tokenizer(special_tokens, vocab_size, *, bos, eos, unk, pad, add_bos, add_eos,
    chat_template, model_max_length)``: a real ``PreTrainedTokenizerFast`` (byte-level BPE
    trained on a built-in corpus; any text encodes) carrying your family's special tokens
    as single, never-split ids. ``make_chatml_tokenizer(special_tokens)``: the Qwen
    flavour (``<|endoftext|> <|im_start|> <|im_end|>``, no BOS). ``save_tokenizer(tok, dir)``
    writes tokenizer.json, tokenizer_config.json, special_tokens_map.json (and
    chat_template.jinja) so ``AutoTokenizer.from_pretrained(dir)`` gives the same ids.

Checkpoint files (:mod:`vlkit.testing.checkpoint`)
    ``write_config``, ``write_safetensors`` (single file or HF-named shards with
    ``model.safetensors.index.json``), ``write_bin`` (``pytorch_model.bin``, sharded or not),
    ``write_preprocessor_config``, ``write_chat_template`` (chat_template.jinja and
    tokenizer_config.json), ``legacy_config`` (a config as transformers 4 spelled it) and
    ``random_state_dict(model, seed)`` (deterministic, non-degenerate random weights for any
    module: use it for your projector and VLM weights).

Text LMs (:mod:`vlkit.testing.text`)
    ``write_tiny_llama``, ``write_tiny_qwen2``, ``write_tiny_internlm2`` write a complete tiny
    LM directory and return its path; ``tiny_llama_config`` / ``tiny_qwen2_config`` give the
    config dicts to embed as a VLM's ``text_config``; ``llama_state_dict_to_internlm2`` /
    ``internlm2_state_dict_to_llama`` / ``load_internlm2_as_llama`` relate InternLM2's packed
    ``wqkv`` layout to LLaMA (its reference).

Vision towers (:mod:`vlkit.testing.vision`)
    ``write_tiny_clip_vision`` / ``write_tiny_siglip_vision`` write a standalone tower with its
    image processor config (what LLaVA's original code loads by name);
    ``tiny_clip_vision_config`` / ``tiny_siglip_vision_config`` give ``vision_config`` dicts;
    ``clip_image_processor_config`` / ``siglip_image_processor_config`` the processor dicts.

Images (:mod:`vlkit.testing.images`)
    ``make_image(w, h, mode, seed)`` (textured, deterministic), ``image_set()`` (named cases:
    square, wide, tall, tiny, large, RGBA, L, P, LA, CMYK, I;16, EXIF-rotated JPEG),
    ``exif_rotated_jpeg()``, ``upright_size``, ``image_bytes``, ``data_uri``,
    ``corrupt_image_bytes`` and ``truncated_image_bytes`` (bad input); ``as_vlkit_decodes(img)``
    (the RGB image vlkit hands a VisionModel, for feeding a reference the same pixels).

Checkpoint code (:mod:`vlkit.testing.remote_code`)
    ``plant_checkpoint_code(dir)`` names code in the checkpoint's ``auto_map`` and writes it as
    modules that exit the process (status ``RAN_CODE_STATUS``) when imported;
    ``run_on_terminal(argv)`` runs a command on a pseudo-terminal (where transformers would ask
    ``[y/N]``) and returns its status and output.

Hooks (:mod:`vlkit.testing.hooks`)
    ``call_hook(hook, family, **kwargs)`` calls one family's hook as the core does (its owner
    only, then the core's fallback).

Names are importable from ``vlkit.testing`` directly; submodules load on first use, so
importing the package costs nothing until a helper is used.
"""

from __future__ import annotations

from vlkit._lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    ".tokenizer": ("CHATML_TEMPLATE", "make_chatml_tokenizer", "make_tokenizer", "save_tokenizer"),
    ".checkpoint": ("legacy_config", "random_state_dict", "write_bin", "write_chat_template", "write_config",
                   "write_json", "write_preprocessor_config", "write_safetensors"),
    ".text": ("INTERNLM2_CHAT_TEMPLATE", "internlm2_config_from_llama", "internlm2_state_dict_to_llama",
             "llama_state_dict_to_internlm2", "load_internlm2_as_llama", "tiny_llama_config", "tiny_qwen2_config",
             "write_tiny_internlm2", "write_tiny_llama", "write_tiny_qwen2"),
    ".vision": ("CLIP_MEAN", "CLIP_STD", "SIGLIP_MEAN", "SIGLIP_STD", "clip_image_processor_config", "siglip_image_processor_config",
               "tiny_clip_vision_config", "tiny_siglip_vision_config", "write_tiny_clip_vision",
               "write_tiny_siglip_vision"),
    ".hooks": ("call_hook",),
    ".remote_code": ("RAN_CODE_STATUS", "plant_checkpoint_code", "run_on_terminal"),
    ".images": ("as_vlkit_decodes", "corrupt_image_bytes", "data_uri", "exif_rotated_jpeg", "image_bytes", "image_set", "make_image",
               "truncated_image_bytes", "upright_size"),
})
