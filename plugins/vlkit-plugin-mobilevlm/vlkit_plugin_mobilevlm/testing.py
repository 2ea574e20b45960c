"""The reference MobileVLM for tests and the bench (imports transformers).

There is no transformers class for ``MobileLlamaForCausalLM``. :class:`EagerMobileVLM` composes
the model the way the MobileVLM repository does (``mobilevlm/model/mobilevlm.py``), from
transformers parts and without this plugin's vision or prompt code:

* tower: transformers' ``CLIPVisionModel`` (config from ``mm_vision_tower``; weights from the
  checkpoint's ``model.vision_tower.vision_tower.vision_model.*`` when present, else from the
  tower's own checkpoint), ``hidden_states[mm_vision_select_layer][:, 1:]``;
* projector: :func:`vlkit_plugin_mobilevlm.modeling.build_projector` — the one piece shared
  with the plugin; it is pinned separately to tensors produced by the ORIGINAL
  ``vision_projector.py`` (``tests/data/ldp_reference.safetensors``, see ``tests/data/README.md``);
* language model: transformers' ``LlamaForCausalLM`` fed ``inputs_embeds``;
* prompt: ``conv_vicuna_v1`` re-derived (:func:`vicuna_v1_prompt`) and the original's
  ``tokenizer_image_token`` (:func:`tokenizer_image_token`, ``-200`` per image);
* pixels: transformers' ``LlavaImageProcessor(do_pad=True)`` (pads with the mean colour exactly
  as ``expand2square``, then CLIP's resize and crop), from the tower's preprocessor config.

:meth:`EagerMobileVLM.__call__` is a :class:`vlkit.testing.conformance.Reference` factory;
:meth:`EagerMobileVLM.generate_batch` is the HF-style batched peer of the bench (left padded).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vlkit.testing.conformance import Reference
from vlkit.testing.conversations import IMAGE_TOKEN_INDEX, sep_two_prompt, tokenizer_image_token

VICUNA_V1_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)


def vicuna_v1_prompt(messages: list[dict[str, Any]], system: str = VICUNA_V1_SYSTEM) -> str:
    """MobileVLM's ``conv_vicuna_v1.get_prompt()`` after ``append_message(ASSISTANT, None)``
    (``DEFAULT_IMAGE_TOKEN + "\\n" + prompt`` in ``scripts/inference.py``)."""
    return sep_two_prompt(messages, system)


def _load_state(model_dir: Path) -> dict[str, Any]:
    from vlkit.plugin import read_tensors

    return read_tensors(model_dir, lambda n: n)


class EagerMobileVLM:
    """HF-style eager MobileVLM on CPU, fp32 by default."""

    def __init__(self, model_dir: str | Path, dtype: Any = None) -> None:
        import torch
        import transformers
        from transformers import (
            AutoTokenizer,
            CLIPVisionConfig,
            CLIPVisionModel,
            LlamaConfig,
            LlamaForCausalLM,
        )

        from vlkit_plugin_mobilevlm.modeling import build_projector

        dtype = dtype or torch.float32
        model_dir = Path(model_dir)
        self.cfg = cfg = json.loads((model_dir / "config.json").read_text())
        self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        tower_dir = Path(cfg["mm_vision_tower"])
        state = _load_state(model_dir)

        vcfg = json.loads((tower_dir / "config.json").read_text())
        self.tower = CLIPVisionModel(CLIPVisionConfig(**{k: v for k, v in vcfg.items() if k != "model_type"}))
        prefix = "model.vision_tower.vision_tower."
        tower_state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if not tower_state:
            tower_state = _load_state(tower_dir)
        want = self.tower.state_dict()
        tower_state = {k if k in want else k.removeprefix("vision_model."): v for k, v in tower_state.items()}
        self.tower.load_state_dict(tower_state, strict=True)
        self.tower.to(dtype).eval()

        kind = cfg["mm_projector_type"]
        self.projector = build_projector(kind, int(cfg["mm_hidden_size"]), int(cfg["hidden_size"]))
        pp = "model.mm_projector."
        self.projector.load_state_dict({k[len(pp):]: v for k, v in state.items() if k.startswith(pp)}, strict=True)
        self.projector.to(dtype).eval()

        text_keys = set(LlamaConfig().to_dict())
        lcfg = LlamaConfig(**{k: v for k, v in cfg.items() if k in text_keys and k != "model_type"})
        self.lm = LlamaForCausalLM(lcfg)
        lm_state = {k: v for k, v in state.items() if not k.startswith(("model.mm_projector.", "model.vision_tower."))}
        self.lm.load_state_dict(lm_state, strict=True)
        self.lm.to(dtype).eval()
        self.dtype = dtype

        pp_cfg = json.loads((tower_dir / "preprocessor_config.json").read_text())
        common = {k: pp_cfg[k] for k in ("size", "crop_size", "image_mean", "image_std") if k in pp_cfg}
        common["resample"] = pp_cfg.get("resample", 3)
        pad = cfg.get("image_aspect_ratio") == "pad"
        name = "LlavaImageProcessor" if pad else "CLIPImageProcessor"
        cls = getattr(transformers, name + "Pil", None) or getattr(transformers, name)
        self.processor = cls(**common, **({"do_pad": True} if pad else {}))
        self.select_layer = int(cfg.get("mm_vision_select_layer", -2))

    # -- pieces ----------------------------------------------------------------------------
    def encode_images(self, images: list[Any]) -> Any:
        """``[N, tokens, lm_hidden]`` for PIL images (one batched tower + projector forward)."""
        import torch

        px = torch.as_tensor(self.processor(images=images, return_tensors="pt")["pixel_values"]).to(self.dtype)
        with torch.inference_mode():
            hs = self.tower(pixel_values=px, output_hidden_states=True).hidden_states[self.select_layer][:, 1:]
            return self.projector(hs)

    def prompt_ids(self, messages: list[dict[str, Any]]) -> list[int]:
        return tokenizer_image_token(vicuna_v1_prompt(messages), self.tokenizer)

    def embed(self, ids: list[int], feats: list[Any]) -> tuple[Any, list[int]]:
        """``prepare_inputs_labels_for_multimodal`` for one prompt: ``(inputs_embeds [L, D], expanded ids)``."""
        import torch

        emb = self.lm.get_input_embeddings()
        parts, expanded, k, start = [], [], 0, 0
        with torch.inference_mode():
            for i, t in enumerate(ids + [IMAGE_TOKEN_INDEX]):
                if t != IMAGE_TOKEN_INDEX:
                    continue
                if i > start:
                    parts.append(emb(torch.tensor(ids[start:i])))
                    expanded += ids[start:i]
                if i < len(ids):
                    parts.append(feats[k])
                    expanded += [IMAGE_TOKEN_INDEX] * feats[k].shape[0]
                    k += 1
                start = i + 1
            return torch.cat(parts), expanded

    def _images(self, messages: list[dict[str, Any]]) -> list[Any]:
        return [p["image"] for m in messages for p in m["content"] if p["type"] == "image"]

    # -- the conformance reference ---------------------------------------------------------
    def __call__(self, messages: list[dict[str, Any]], max_new_tokens: int) -> Reference:
        import torch

        images = self._images(messages)
        feats = list(self.encode_images(images)) if images else []
        embeds, ids = self.embed(self.prompt_ids(messages), feats)
        with torch.inference_mode():
            logits = self.lm(inputs_embeds=embeds[None]).logits[0].float()
            out = self.lm.generate(
                inputs_embeds=embeds[None], attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                pad_token_id=self.tokenizer.pad_token_id,
            )
        return Reference(ids, IMAGE_TOKEN_INDEX, out[0].tolist(), logits)

    # -- the bench peer --------------------------------------------------------------------
    def generate_batch(self, requests: list[tuple[str, Any]], max_new_tokens: int, ignore_eos: bool = True) -> Any:
        """HF ``generate`` on a whole batch of ``(text, PIL image)``: left padded, greedy,
        ``torch.inference_mode()``. Returns ``[B, max_new_tokens]`` token ids."""
        import torch

        msgs = [[{"role": "user", "content": [{"type": "image", "image": im}, {"type": "text", "text": t}]}]
                for t, im in requests]
        with torch.inference_mode():
            feats = self.encode_images([im for _, im in requests])
            seqs = [self.embed(self.prompt_ids(m), [feats[i]])[0] for i, m in enumerate(msgs)]
            n = max(s.shape[0] for s in seqs)
            d = seqs[0].shape[1]
            embeds = torch.zeros(len(seqs), n, d, dtype=seqs[0].dtype)
            mask = torch.zeros(len(seqs), n, dtype=torch.long)
            for i, s in enumerate(seqs):
                embeds[i, n - s.shape[0]:] = s
                mask[i, n - s.shape[0]:] = 1
            kwargs: dict[str, Any] = {"min_new_tokens": max_new_tokens} if ignore_eos else {}
            return self.lm.generate(
                inputs_embeds=embeds, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                num_beams=1, pad_token_id=self.tokenizer.pad_token_id, **kwargs,
            )
