"""LlavaVisionModel against transformers' own image features, and the original layout's
preprocessing against the original code's (as re-derived in vlkit_plugin_llava.testing)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from vlkit_plugin_llava import anyres
from vlkit_plugin_llava.layout import LlavaConfigError, layout_from_config
from vlkit_plugin_llava.vision import LlavaVisionModel, LlavaWeightError

from vlkit.plugin import expand_to_square
from vlkit.testing.images import make_image

SIZES = [(64, 64), (300, 120), (120, 300), (10, 10), (77, 64), (200, 150), (43, 129), (500, 90)]


def images(mode: str = "RGB") -> list:
    return [make_image(w, h, mode, seed=i) for i, (w, h) in enumerate(SIZES)]


def vision(path: Path, config: dict | None = None) -> LlavaVisionModel:
    cfg = config or json.loads((path / "config.json").read_text())
    vm = LlavaVisionModel(None, cfg, path)
    vm.build_preprocessor()
    vm.build_model()
    return vm


def encode(vm: LlavaVisionModel, imgs: list) -> tuple[list, list]:
    items = vm.preprocess(imgs, [{} for _ in imgs])
    return items, vm.forward(items)


@pytest.fixture(scope="module")
def hf_models(ckpts):
    from transformers import AutoProcessor, LlavaForConditionalGeneration, LlavaNextForConditionalGeneration

    return {
        "llava": (LlavaForConditionalGeneration.from_pretrained(ckpts["llava"]).eval(), AutoProcessor.from_pretrained(ckpts["llava"])),
        "next": (LlavaNextForConditionalGeneration.from_pretrained(ckpts["next"]).eval(), AutoProcessor.from_pretrained(ckpts["next"])),
    }


def hf_features(model, image_processor, img, **proc_kwargs) -> torch.Tensor:
    inp = image_processor(images=[img], return_tensors="pt", **proc_kwargs)
    kw = {"image_sizes": inp["image_sizes"]} if "image_sizes" in inp else {}
    with torch.inference_mode():
        out = model.get_image_features(pixel_values=inp["pixel_values"], **kw)
    return out.pooler_output[0]


@pytest.mark.parametrize("name", ["llava", "next"])
def test_features_equal_transformers(ckpts, hf_models, name):
    model, proc = hf_models[name]
    vm = vision(ckpts[name])
    imgs = images()
    items, feats = encode(vm, imgs)
    for img, item, f in zip(imgs, items, feats):
        ref = hf_features(model, proc.image_processor, img)
        assert f.shape == ref.shape == (item.num_tokens, model.config.text_config.hidden_size), img.size
        torch.testing.assert_close(f, ref, atol=1e-5, rtol=1e-5)


def test_next_tilings_differ_by_aspect_ratio(ckpts):
    vm = vision(ckpts["next"])
    items = vm.preprocess(images(), [{} for _ in SIZES])
    grids = {it.meta["grid"] for it in items}
    assert len(grids) >= 3, grids  # 1x2, 2x1, 2x2, 1x3 all reachable
    assert len({it.num_tokens for it in items}) >= 4


def test_next_num_tokens_equal_processor(ckpts):
    """Token counts for many sizes equal what LlavaNextProcessor expands ``<image>`` to."""
    from transformers import AutoProcessor

    proc = AutoProcessor.from_pretrained(ckpts["next"])
    vm = LlavaVisionModel(None, json.loads((ckpts["next"] / "config.json").read_text()), ckpts["next"])
    sizes = [(h, w) for h in (1, 7, 20, 41, 42, 43, 84, 100, 333, 1000) for w in (1, 9, 42, 50, 85, 127, 640)]
    expected = proc._get_num_multimodal_tokens(image_sizes=sizes)["num_image_tokens"]
    got = [anyres.num_image_tokens(vm.layout, h, w, vm.image_size, vm.patch_size)[0] for h, w in sizes]
    assert got == expected
    # and the full processor path on real images
    for img in images()[:4]:
        ids = proc(text="<image>", images=[img])["input_ids"][0]
        n = sum(1 for t in ids if t == proc.image_token_id)
        assert vm.preprocess([img], [{}])[0].num_tokens == n


def test_batched_forward_equals_one_by_one(ckpts):
    vm = vision(ckpts["next"])
    imgs = images()
    _, batched = encode(vm, imgs)
    for img, f in zip(imgs, batched):
        _, (single,) = encode(vm, [img])
        torch.testing.assert_close(f, single, atol=1e-5, rtol=1e-5)


def test_builds_only_the_vision_side(ckpts):
    vm = vision(ckpts["llava"])
    names = [n for n, _ in vm.model.named_parameters()]
    assert not any("language" in n or "lm_head" in n or "embed_tokens" in n for n in names)
    layers = json.loads((ckpts["llava"] / "config.json").read_text())["vision_config"]["num_hidden_layers"]
    assert len(vm.model.tower.encoder.layers) == layers - 1  # feature layer -2: the last layer never runs
    assert not any(p.is_meta for p in vm.model.parameters())


def test_original_15_pads_with_mean_colour(ckpts, hf_models):
    """The original 1.5 pads to a square with the mean colour (expand2square) before CLIP's
    resize + centre crop. transformers' LlavaImageProcessor(do_pad=True) does exactly that;
    llava-hf's saved CLIPImageProcessor does not pad (it centre-crops), so for non-square
    images the original layout and the llava-hf layout give different features."""
    from transformers import AutoProcessor, LlavaForConditionalGeneration
    from vlkit_plugin_llava.testing import _pil_processor

    twin = LlavaForConditionalGeneration.from_pretrained(ckpts["llava"]).eval()
    clip = _pil_processor("CLIPImageProcessor", **AutoProcessor.from_pretrained(ckpts["llava"]).image_processor.to_dict())
    pad = _pil_processor(
        "LlavaImageProcessor", do_pad=True, size={"shortest_edge": clip.size.shortest_edge},
        crop_size={"height": clip.crop_size.height, "width": clip.crop_size.width},
        image_mean=clip.image_mean, image_std=clip.image_std,
    )
    vm = vision(ckpts["orig15"])
    imgs = images()
    _, feats = encode(vm, imgs)
    for img, f in zip(imgs, feats):
        mean = tuple(int(x * 255) for x in clip.image_mean)
        px_pad = pad(images=[img], return_tensors="pt")["pixel_values"]
        px_e2s = clip(images=[expand_to_square(img, mean)], return_tensors="pt")["pixel_values"]
        assert torch.equal(px_pad, px_e2s)
        torch.testing.assert_close(f, hf_features(twin, pad, img), atol=1e-5, rtol=1e-5)
        crop = hf_features(twin, clip, img)
        if img.size[0] == img.size[1]:
            torch.testing.assert_close(f, crop, atol=1e-5, rtol=1e-5)
        else:
            assert (f - crop).abs().max() > 1e-2


def test_original_16_equals_next_twin(ckpts, hf_models):
    """Original anyres (pinpoints in (w, h), paste on black, squashed base tile, truncating
    unpad) gives the NeXT twin's features for images where rounding and truncation agree."""
    from vlkit_plugin_llava.testing import _pil_processor

    model, proc = hf_models["next"]
    pil = _pil_processor("LlavaNextImageProcessor", **proc.image_processor.to_dict())  # the original used PIL
    vm = vision(ckpts["orig16"])
    assert vm.layout.pinpoints == tuple(tuple(p) for p in model.config.image_grid_pinpoints)
    imgs = images()
    items, feats = encode(vm, imgs)
    for img, item, f in zip(imgs, items, feats):
        ref = hf_features(model, pil, img)
        hf_px = pil(images=[img], return_tensors="pt")["pixel_values"][0]
        assert torch.equal(item.data["pixel_values"], hf_px[: item.data["pixel_values"].shape[0]])
        torch.testing.assert_close(f, ref, atol=1e-5, rtol=1e-5)


def test_original_16_uses_the_checkpoints_tower(ckpts):
    """LLaVA-1.6 fine-tuned its tower (unfreeze_mm_vision_tower) and saved it under
    model.vision_tower.vision_tower.*: those weights win over mm_vision_tower's."""
    cfg = json.loads((ckpts["orig16"] / "config.json").read_text())
    imgs = images()[:2]
    _, from_ckpt = encode(vision(ckpts["orig16"], cfg), imgs)
    _, from_tower = encode(vision(ckpts["orig16"], {**cfg, "unfreeze_mm_vision_tower": False}), imgs)
    assert (from_ckpt[0] - from_tower[0]).abs().max() > 1e-2


def test_original_bin_shards_equal_safetensors(ckpts):
    imgs = images()[:3]
    _, a = encode(vision(ckpts["orig15"]), imgs)
    _, b = encode(vision(ckpts["orig15-bin"]), imgs)
    for x, y in zip(a, b):
        assert torch.equal(x, y)


def test_missing_tensor_is_named(ckpts, tmp_path):
    from safetensors.torch import load_file, save_file

    bad = tmp_path / "bad"
    shutil.copytree(ckpts["orig15"], bad)
    state = load_file(bad / "model.safetensors")
    del state["model.mm_projector.2.weight"]
    save_file(state, bad / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(LlavaWeightError, match="projector.layers.2.weight"):
        vision(bad)


def test_misshaped_tensor_is_named(ckpts, tmp_path):
    from safetensors.torch import load_file, save_file

    bad = tmp_path / "bad"
    shutil.copytree(ckpts["llava"], bad)
    state = load_file(bad / "model.safetensors")
    key = next(k for k in state if k.endswith("multi_modal_projector.linear_1.weight"))
    state[key] = state[key][:, :-1].contiguous()
    save_file(state, bad / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(LlavaWeightError, match="wrong shape: projector.layers.0.weight"):
        vision(bad)


def test_unreachable_vision_tower_is_named(ckpts, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = json.loads((ckpts["orig15"] / "config.json").read_text())
    with pytest.raises(FileNotFoundError, match="mm_vision_tower '/nonexistent/clip'"):
        LlavaVisionModel(None, {**cfg, "mm_vision_tower": "/nonexistent/clip"}, ckpts["orig15"])
    with pytest.raises(FileNotFoundError, match="mm_vision_tower 'nobody/no-such-clip'"):
        LlavaVisionModel(None, {**cfg, "mm_vision_tower": "nobody/no-such-clip"}, ckpts["orig15"])


def test_original_pinpoints_are_width_height():
    base = {"architectures": ["LlavaLlamaForCausalLM"], "mm_vision_tower": "x", "hidden_size": 8,
            "image_aspect_ratio": "anyres", "mm_patch_merge_type": "spatial_unpad"}
    lay = layout_from_config({**base, "image_grid_pinpoints": [[336, 672], [1008, 336]]})
    assert lay.pinpoints == ((672, 336), (336, 1008))  # stored (height, width)
    assert lay.unpad_rounding == "trunc" and lay.newline
    as_text = layout_from_config({**base, "image_grid_pinpoints": "[(336, 672), (1008, 336)]"})
    assert as_text.pinpoints == lay.pinpoints
    with pytest.raises(LlavaConfigError, match="image_aspect_ratio"):
        layout_from_config({**base, "image_aspect_ratio": "weird"})
    with pytest.raises(LlavaConfigError, match="mm_vision_tower"):
        layout_from_config({"architectures": ["LlavaLlamaForCausalLM"], "hidden_size": 8})


def test_per_image_options_are_refused(ckpts):
    vm = vision(ckpts["llava"])
    with pytest.raises(ValueError, match="max_dynamic_patch"):
        vm.preprocess([make_image(20, 20)], [{"max_dynamic_patch": 4}])


def test_unpad_truncates_in_the_original_and_rounds_in_transformers():
    """transformers' unpad uses int(round(x, 7)), the original int(x): they differ where the
    scaled size is a hair under an integer."""
    found = [
        (h, w) for h in range(1, 300) for w in range(1, 300)
        if anyres.unpad_bounds(h, w, 42, 84, "trunc") != anyres.unpad_bounds(h, w, 42, 84, "round")
    ]
    assert found, "no size where truncating and rounding differ"
    h, w = found[0]
    exact = h * (84 / w) if w / h > 2 else w * (42 / h)
    assert abs(exact - round(exact)) < 1e-6  # a float a hair off an integer


def test_feature_layer_list_and_full_strategy(tmp_path):
    """vision_feature_layer as a list (features concatenated) and strategy "full" (CLS kept)."""
    from transformers import AutoProcessor, LlavaForConditionalGeneration
    from vlkit_plugin_llava.checkpoints import tiny_llava

    path = tiny_llava(tmp_path / "v", vision_feature_layer=[-3, -1], vision_feature_select_strategy="full")
    model = LlavaForConditionalGeneration.from_pretrained(path).eval()
    proc = AutoProcessor.from_pretrained(path)
    vm = vision(path)
    assert len(vm.model.tower.encoder.layers) == model.config.vision_config.num_hidden_layers
    imgs = images()[:3]
    items, feats = encode(vm, imgs)
    for img, item, f in zip(imgs, items, feats):
        torch.testing.assert_close(f, hf_features(model, proc.image_processor, img), atol=1e-5, rtol=1e-5)
        ids = proc(text="<image>", images=[img])["input_ids"][0]
        assert item.num_tokens == sum(1 for t in ids if t == proc.image_token_id) == 17


@pytest.mark.parametrize("layout", ["transformers>=4.52", "llava-hf hub (transformers<4.52)"])
def test_every_saved_key_layout_loads(ckpts, tmp_path, layout):
    """llava-hf checkpoints exist with model.vision_tower.vision_model.* / model.multi_modal_projector.*
    (newer transformers) and vision_tower.vision_model.* / multi_modal_projector.* (the hub's
    older files); both load to the same features."""
    from safetensors.torch import load_file, save_file

    out = tmp_path / "renamed"
    shutil.copytree(ckpts["next"], out)
    state = load_file(out / "model.safetensors")
    renamed = {}
    for k, v in state.items():
        if k.startswith("vision_tower."):
            k = "vision_tower.vision_model." + k[len("vision_tower."):]
        elif k.startswith("language_model.model."):
            k = "model.language_model." + k[len("language_model.model."):] if layout.startswith("transformers") else k
        if layout.startswith("transformers") and not k.startswith(("model.", "language_model.lm_head")):
            k = "model." + k
        if layout.startswith("transformers") and k.startswith("language_model.lm_head."):
            k = "lm_head." + k[len("language_model.lm_head."):]
        renamed[k] = v
    save_file(renamed, out / "model.safetensors", metadata={"format": "pt"})
    imgs = images()[:2]
    _, a = encode(vision(ckpts["next"]), imgs)
    _, b = encode(vision(out), imgs)
    for x, y in zip(a, b):
        assert torch.equal(x, y)


def test_fp16_original_checkpoint_loads_in_fp32(ckpts, tmp_path):
    from vlkit_plugin_llava.checkpoints import tiny_llava_original

    half = tiny_llava_original(tmp_path / "half", version="1.5", hf_checkpoint=ckpts["llava"], dtype="float16")
    vm = vision(half)
    assert next(vm.model.parameters()).dtype == torch.float32
    imgs = images()[:2]
    _, a = encode(vm, imgs)
    _, b = encode(vision(ckpts["orig15"]), imgs)
    for x, y in zip(a, b):
        assert (x - y).abs().max() < 0.05 * y.abs().max()
