"""References the InternVL tests compare against, written from the original code, not from vlkit's.

* :class:`HFReference` — transformers' ``InternVLForConditionalGeneration`` fed what
  ``InternVLProcessor`` would give: the checkpoint's chat template rendered by the tokenizer,
  each ``<IMG_CONTEXT>`` replaced by ``<img>`` + ``<IMG_CONTEXT>`` × image_seq_length × patches +
  ``</img>`` (``InternVLProcessor.replace_image_token``), pixels from ``GotOcr2ImageProcessorPil``.
  (``InternVLProcessor`` itself cannot be built here: it needs torchvision for its video part.)
* :class:`OriginalReference` — the original ``InternVLChatModel.chat``: the conversation
  template of ``internvl/conversation.py`` (separator style MPT, transcribed below),
  ``<image>\\n`` + question for a message with images (its images' tiles concatenated, as the
  model card's "combined images"), ``dynamic_preprocess`` + ``build_transform`` (transcribed
  below), generation ending on ``<|im_end|>`` (and the tokenizer's EOS, on which vlkit and
  lmdeploy also stop); run on transformers' model holding the same weights.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from vlkit.contract.messages import IMAGE_TOKEN
from vlkit.testing.conformance import Reference

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

# conversation.py: name -> (system_template, system_message, roles, sep)
OLD = "你是由上海人工智能实验室联合商汤科技开发的书生多模态大模型，英文名叫InternVL, 是一个有用无害的人工智能助手。"
NEW = "你是书生·万象，英文名是InternVL，是由上海人工智能实验室、清华大学及多家合作单位联合开发的多模态大语言模型。"
CONV = {
    "Hermes-2": ("<|im_start|>system\n{system_message}", OLD, ("<|im_start|>user\n", "<|im_start|>assistant\n"), "<|im_end|>"),
    "internlm2-chat": ("<|im_start|>system\n{system_message}", OLD, ("<|im_start|>user\n", "<|im_start|>assistant\n"), "<|im_end|>"),
    "internvl2_5": ("<|im_start|>system\n{system_message}", NEW, ("<|im_start|>user\n", "<|im_start|>assistant\n"), "<|im_end|>\n"),
    "phi3-chat": ("<|system|>\n{system_message}", OLD, ("<|user|>\n", "<|assistant|>\n"), "<|end|>"),
}


def mpt_prompt(template: str, turns: list[tuple[str, str | None]], system: str | None = None) -> str:
    """``Conversation.get_prompt`` for SeparatorStyle.MPT: turns are (role index 0/1, message or None)."""
    sys_tpl, sys_msg, roles, sep = CONV[template]
    ret = sys_tpl.format(system_message=sys_msg if system is None else system) + sep
    for role, message in turns:
        ret += roles[role] + message + sep if message else roles[role]
    return ret


def get_index(bound, fps, max_frame, first_idx=0, num_segments=32):
    """The original video example's frame choice (``load_video``), transcribed."""
    if bound:
        start, end = bound[0], bound[1]
    else:
        start, end = -100000, 100000
    start_idx = max(first_idx, round(start * fps))
    end_idx = min(round(end * fps), max_frame)
    seg_size = float(end_idx - start_idx) / num_segments
    return [int(start_idx + (seg_size / 2) + round(seg_size * idx)) for idx in range(num_segments)]


# -- the original preprocessing, transcribed ------------------------------------------------------
def find_closest_aspect_ratio(aspect_ratio, target_ratios, width, height, image_size):
    best_ratio_diff = float("inf")
    best_ratio = (1, 1)
    area = width * height
    for ratio in target_ratios:
        target_aspect_ratio = ratio[0] / ratio[1]
        ratio_diff = abs(aspect_ratio - target_aspect_ratio)
        if ratio_diff < best_ratio_diff:
            best_ratio_diff = ratio_diff
            best_ratio = ratio
        elif ratio_diff == best_ratio_diff:
            if area > 0.5 * image_size * image_size * ratio[0] * ratio[1]:
                best_ratio = ratio
    return best_ratio


def dynamic_preprocess(image, min_num=1, max_num=6, image_size=448, use_thumbnail=False):
    orig_width, orig_height = image.size
    aspect_ratio = orig_width / orig_height
    target_ratios = set(
        (i, j) for n in range(min_num, max_num + 1) for i in range(1, n + 1) for j in range(1, n + 1)
        if i * j <= max_num and i * j >= min_num
    )
    target_ratios = sorted(target_ratios, key=lambda x: x[0] * x[1])
    target_aspect_ratio = find_closest_aspect_ratio(aspect_ratio, target_ratios, orig_width, orig_height, image_size)
    target_width = image_size * target_aspect_ratio[0]
    target_height = image_size * target_aspect_ratio[1]
    blocks = target_aspect_ratio[0] * target_aspect_ratio[1]
    resized_img = image.resize((target_width, target_height))
    processed_images = []
    for i in range(blocks):
        box = (
            (i % (target_width // image_size)) * image_size,
            (i // (target_width // image_size)) * image_size,
            ((i % (target_width // image_size)) + 1) * image_size,
            ((i // (target_width // image_size)) + 1) * image_size,
        )
        processed_images.append(resized_img.crop(box))
    if use_thumbnail and len(processed_images) != 1:
        processed_images.append(image.resize((image_size, image_size)))
    return processed_images


def build_transform(image: Image.Image, input_size: int) -> torch.Tensor:
    """Lambda(RGB), Resize((s, s), BICUBIC), ToTensor, Normalize(ImageNet)."""
    import numpy as np

    img = image.convert("RGB") if image.mode != "RGB" else image
    img = img.resize((input_size, input_size), Image.BICUBIC)
    x = torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1).float() / 255.0
    return (x - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)


def to_rgb(image: Image.Image) -> Image.Image:
    """Transparent images composited on white (transformers' ``convert_to_rgb``, lmdeploy's ``load_image``)."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return image.convert("RGB")


def original_pixels(image: Image.Image, cfg: dict[str, Any], max_num: int | None = None) -> torch.Tensor:
    size = cfg.get("force_image_size") or cfg["vision_config"]["image_size"]
    tiles = dynamic_preprocess(
        to_rgb(image), min_num=cfg.get("min_dynamic_patch", 1),
        max_num=max_num or cfg["max_dynamic_patch"], image_size=size, use_thumbnail=cfg["use_thumbnail"],
    )
    return torch.stack([build_transform(t, size) for t in tiles])


def _split(messages: list[dict[str, Any]]) -> list[tuple[str, str, list[Any]]]:
    out = []
    for m in messages:
        content = m["content"]
        if isinstance(content, str):
            out.append((m["role"], content, []))
            continue
        text = "".join(p["text"] for p in content if p["type"] == "text")
        images = [p["image"] for p in content if p["type"] == "image"]
        out.append((m["role"], text, images))
    return out


class OriginalReference:
    """``InternVLChatModel.chat`` semantics on transformers' model with the same weights."""

    def __init__(self, original_dir: str | Path, hf_dir: str | Path, tokenizer: Any = None) -> None:
        from transformers import AutoTokenizer, InternVLForConditionalGeneration

        self.cfg = json.loads((Path(original_dir) / "config.json").read_text())
        self.tokenizer = tokenizer or AutoTokenizer.from_pretrained(str(original_dir))
        self.model = InternVLForConditionalGeneration.from_pretrained(str(hf_dir), dtype=torch.float32).eval()
        size = self.cfg.get("force_image_size") or self.cfg["vision_config"]["image_size"]
        patch = self.cfg["vision_config"]["patch_size"]
        self.num_image_token = int((size // patch) ** 2 * self.cfg["downsample_ratio"] ** 2)
        self.image_token_id = self.tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>")
        self.model.config.image_token_id = self.image_token_id  # the original checkpoint's tokenizer decides

    def query(self, messages: list[dict[str, Any]], max_num: int | None = None) -> tuple[str, torch.Tensor | None]:
        turns, pixels, patches, system = [], [], [], None
        for role, text, images in _split(messages):
            if role == "system":
                system = text
                continue
            if images:
                px = [original_pixels(im, self.cfg, max_num) for im in images]
                pixels += px
                if IMAGE_TOKEN in text:  # one <image> per placed image, as the model card's separate images
                    text = text.replace(IMAGE_TOKEN, "<image>")
                    patches += [p.shape[0] for p in px]
                else:  # the model card's combined images: one <image> for all tiles
                    text = "<image>\n" + text
                    patches.append(sum(p.shape[0] for p in px))
            turns.append((0 if role == "user" else 1, text))
        turns.append((1, None))
        query = mpt_prompt(self.cfg["template"], turns, system)
        for n in patches:
            query = query.replace("<image>", "<img>" + "<IMG_CONTEXT>" * self.num_image_token * n + "</img>", 1)
        # lmdeploy joins images written next to each other into one span
        query = query.replace("</img><img>", "")
        return query, (torch.cat(pixels) if pixels else None)

    def __call__(self, messages: list[dict[str, Any]], max_new_tokens: int, mask_eos: bool = True,
                 max_num: int | None = None) -> Reference:
        query, pixels = self.query(messages, max_num)
        ids = self.tokenizer(query, return_tensors="pt")
        # chat() stops on its template's separator only (<|im_end|>, <|end|> for phi3-chat); vlkit
        # (as lmdeploy) also stops on the tokenizer's EOS
        sep = CONV[self.cfg["template"]][3].strip()
        eos = sorted({self.tokenizer.convert_tokens_to_ids(sep), self.tokenizer.eos_token_id})
        return _run(self.model, ids, pixels, max_new_tokens, eos, self.image_token_id, mask_eos)


class HFReference:
    """transformers' InternVL with InternVLProcessor's prompt expansion (see the module doc)."""

    def __init__(self, hf_dir: str | Path) -> None:
        from transformers import AutoTokenizer, InternVLForConditionalGeneration
        from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil

        self.tokenizer = AutoTokenizer.from_pretrained(str(hf_dir))
        self.image_processor = GotOcr2ImageProcessorPil.from_pretrained(str(hf_dir))
        self.model = InternVLForConditionalGeneration.from_pretrained(str(hf_dir), dtype=torch.float32).eval()
        self.seq = json.loads((Path(hf_dir) / "processor_config.json").read_text())["image_seq_length"]
        self.image_token_id = self.model.config.image_token_id
        gen = json.loads((Path(hf_dir) / "generation_config.json").read_text())
        self.eos = gen["eos_token_id"]

    def __call__(self, messages: list[dict[str, Any]], max_new_tokens: int) -> Reference:
        images = [p["image"] for m in messages if isinstance(m["content"], list) for p in m["content"] if p["type"] == "image"]
        text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        pixels = None
        if images:
            out = self.image_processor(images=images, crop_to_patches=True,
                                       return_tensors="pt")
            pixels, counts = out["pixel_values"], list(out["num_patches"])
            pieces = text.split("<IMG_CONTEXT>")
            assert len(pieces) == len(counts) + 1
            text = pieces[0] + "".join(
                "<img>" + "<IMG_CONTEXT>" * self.seq * int(n) + "</img>" + piece for n, piece in zip(counts, pieces[1:])
            )
        ids = self.tokenizer(text, return_tensors="pt")
        return _run(self.model, ids, pixels, max_new_tokens, self.eos, self.image_token_id)


def _run(model: Any, ids: Any, pixels: Any, max_new_tokens: int, eos: Any, image_token_id: int,
         mask_eos: bool = True) -> Reference:
    n = ids["input_ids"].shape[1]
    kwargs = dict(input_ids=ids["input_ids"], attention_mask=ids["attention_mask"])
    if pixels is not None:
        kwargs["pixel_values"] = pixels
    with torch.inference_mode():
        logits = model(**kwargs).logits[0].float()
        # EOS masked until max_new_tokens, as the conformance suite asks (tiny models often pick it first)
        out = model.generate(**kwargs, max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens if mask_eos else 0,
                             do_sample=False, num_beams=1, eos_token_id=eos, pad_token_id=0)
    return Reference(ids["input_ids"][0].tolist(), image_token_id, out[0, n:].tolist(), logits)
