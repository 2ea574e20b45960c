"""Reference for Qwen-VL-Chat, written from the original code's description, not from vlkit's.

* Prompt: ``make_context`` (ChatML, ``You are a helpful assistant.``) with each user turn built
  by ``tokenizer.from_list_format`` (``Picture {i}: <img>{image}</img>\\n`` per image, numbered
  per turn, then the text); the tokenizer turns each ``<img>…</img>`` into ``<img>`` + 256 ids
  + ``</img>`` (``IMG_TOKEN_SPAN``; here all 256 are ``<imgpad>``, the original writes the
  image path's bytes first — positions are what is compared). Tokenized with tiktoken directly.
* Vision: the ViT + resampler as a plain function of the checkpoint tensors: the ViT's
  attention in the original's ``[seq, batch, hidden]`` layout with per-head ``[q, k, v]``
  ``in_proj`` rows and ``bmm``; the resampler through ``torch.nn.MultiheadAttention`` loaded
  with the checkpoint's ``attn_pool.attn`` tensors; positional tables resized bicubically.
  The original ``visual.py`` lives on the Hugging Face hub, which cannot be reached from here:
  this is an independent derivation, not the original code.
* Language model: transformers' ``Qwen2ForCausalLM`` holding the same weights (the twin the
  checkpoint factory saves as ``<name>-qwen2``), fed the image features as ``inputs_embeds``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from vlkit.contract.messages import IMAGE_TOKEN
from vlkit.testing.conformance import Reference

MEAN, STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


def _abs_pos(table: torch.Tensor, n: int) -> torch.Tensor:
    src, tgt = int(math.sqrt(table.shape[0])), int(math.sqrt(n))
    if src == tgt:
        return table
    x = table.float().reshape(1, src, src, -1).permute(0, 3, 1, 2)
    return F.interpolate(x, size=(tgt, tgt), mode="bicubic", align_corners=False).permute(0, 2, 3, 1).flatten(0, 2)


class ReferenceVisual:
    def __init__(self, sd: dict[str, torch.Tensor], cfg: dict[str, Any]) -> None:
        self.sd, self.cfg = sd, cfg
        out = cfg["output_dim"]
        self.mha = torch.nn.MultiheadAttention(out, max(1, out // 128))
        self.mha.load_state_dict({k[len("attn_pool.attn."):]: v for k, v in sd.items() if k.startswith("attn_pool.attn.")})
        self.mha.eval()

    def pixels(self, image: Image.Image) -> torch.Tensor:
        s = self.cfg["image_size"]
        img = image.convert("RGB").resize((s, s), resample=Image.BICUBIC)
        x = torch.tensor(np.array(img), dtype=torch.float32).permute(2, 0, 1) / 255.0
        return ((x - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None])[None]

    def _ln(self, x, name):
        return F.layer_norm(x, x.shape[-1:], self.sd[name + ".weight"], self.sd[name + ".bias"], eps=1e-6)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        sd, heads = self.sd, self.cfg["heads"]
        x = F.conv2d(self.pixels(image), sd["conv1.weight"], stride=self.cfg["patch_size"])
        x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
        x = x + _abs_pos(sd["positional_embedding"], x.shape[1])
        x = self._ln(x, "ln_pre").permute(1, 0, 2)  # [s, b, h]
        for i in range(self.cfg["layers"]):
            p = f"transformer.resblocks.{i}."
            h = self._ln(x, p + "ln_1")
            s, b, w = h.shape
            hn = w // heads
            mixed = F.linear(h, sd[p + "attn.in_proj.weight"], sd[p + "attn.in_proj.bias"]).view(s, b, heads, 3 * hn)
            q, k, v = mixed.split(hn, dim=-1)
            q = q.reshape(s, b * heads, hn).transpose(0, 1) / math.sqrt(hn)
            k = k.reshape(s, b * heads, hn).transpose(0, 1)
            v = v.reshape(s, b * heads, hn).transpose(0, 1)
            ctx = torch.bmm(torch.bmm(q, k.transpose(1, 2)).softmax(-1), v)
            ctx = ctx.view(b, heads, s, hn).permute(2, 0, 1, 3).reshape(s, b, w)
            x = x + F.linear(ctx, sd[p + "attn.out_proj.weight"], sd[p + "attn.out_proj.bias"])
            h = F.gelu(F.linear(self._ln(x, p + "ln_2"), sd[p + "mlp.c_fc.weight"], sd[p + "mlp.c_fc.bias"]))
            x = x + F.linear(h, sd[p + "mlp.c_proj.weight"], sd[p + "mlp.c_proj.bias"])
        x = x.permute(1, 0, 2)  # [b, s, w]
        kv = F.linear(x, sd["attn_pool.kv_proj.weight"]) if "attn_pool.kv_proj.weight" in sd else x
        kv = self._ln(kv, "attn_pool.ln_kv").permute(1, 0, 2)
        pos = sd["attn_pool.pos_embed"]
        q = self._ln(sd["attn_pool.query"], "attn_pool.ln_q")
        out = self.mha(q.unsqueeze(1).repeat(1, kv.shape[1], 1) + pos.unsqueeze(1),
                       kv + _abs_pos(pos, kv.shape[0]).unsqueeze(1), kv)[0].permute(1, 0, 2)
        return (self._ln(out, "ln_post") @ sd["proj"])[0]


class QwenVLReference:
    def __init__(self, model_dir: str | Path) -> None:
        from safetensors.torch import load_file
        from transformers import Qwen2ForCausalLM
        from vlkit_plugin_qwen.qwenvl_tokenizer import QwenTiktokenTokenizer

        model_dir = Path(model_dir)
        self.cfg = json.loads((model_dir / "config.json").read_text())
        self.tok = QwenTiktokenTokenizer(model_dir / "qwen.tiktoken")
        sd = load_file(str(model_dir / "model.safetensors"))
        self.visual = ReferenceVisual({k[len("transformer.visual."):]: v for k, v in sd.items()
                                       if k.startswith("transformer.visual.")}, self.cfg["visual"])
        self.lm = Qwen2ForCausalLM.from_pretrained(str(model_dir.parent / f"{model_dir.name}-qwen2"),
                                                   dtype=torch.float32).eval()
        self.image_token_id = self.tok.special_tokens["<imgpad>"]
        self.eos = [self.tok.special_tokens[t] for t in ("<|endoftext|>", "<|im_end|>", "<|im_start|>")]

    def _query(self, content: Any) -> tuple[str, list[Image.Image]]:
        if isinstance(content, str):
            return content, []
        text, images, n = "", [], 0
        for part in content:
            if part["type"] == "image":
                n += 1
                images.append(part["image"])
                text += f"Picture {n}: <img>{'<imgpad>' * 256}</img>\n"
            else:
                text += part["text"].replace(IMAGE_TOKEN, "")
        return text, images

    def prompt(self, messages: list[dict[str, Any]]) -> tuple[str, list[Image.Image]]:
        system, rest = "You are a helpful assistant.", list(messages)
        if rest and rest[0]["role"] == "system":
            system = self._query(rest.pop(0)["content"])[0]
        out, images = f"<|im_start|>system\n{system}<|im_end|>", []
        for m in rest:
            text, ims = self._query(m["content"])
            images += ims
            out += f"\n<|im_start|>{m['role']}\n{text}<|im_end|>"
        return out + "\n<|im_start|>assistant\n", images

    def __call__(self, messages: list[dict[str, Any]], max_new_tokens: int) -> Reference:
        text, images = self.prompt(messages)
        ids = torch.tensor([self.tok.encoding.encode(text, allowed_special="all")])
        with torch.inference_mode():
            emb = self.lm.get_input_embeddings()(ids)
            if images:
                feats = torch.cat([self.visual(im) for im in images])
                emb[ids == self.image_token_id] = feats.to(emb.dtype)
            logits = self.lm(inputs_embeds=emb).logits[0]
            out = self.lm.generate(inputs_embeds=emb, attention_mask=torch.ones_like(ids), do_sample=False,
                                   max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens, num_beams=1,
                                   eos_token_id=self.eos, pad_token_id=self.eos[0])
        return Reference(ids[0].tolist(), self.image_token_id, out[0].tolist(), logits)
