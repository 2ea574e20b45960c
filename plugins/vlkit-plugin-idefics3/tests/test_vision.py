"""Idefics3VisionModel against transformers' ``get_image_features`` (vision_model + connector),
padded tiles (``pixel_attention_mask``) included, and its weight loading."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from vlkit_plugin_idefics3.vision import Idefics3VisionModel

from vlkit.plugin import WeightLoadError
from vlkit.testing.images import make_image

SIZES = [(64, 64), (300, 120), (120, 300), (10, 10), (77, 64), (200, 150), (43, 129), (500, 90), (1000, 700)]
ATOL = 1e-5


def vision(path: Path) -> Idefics3VisionModel:
    vm = Idefics3VisionModel(None, json.loads((path / "config.json").read_text()), path)
    vm.build_preprocessor()
    vm.build_model()
    return vm


def reference(model, pixel_values: torch.Tensor, pixel_mask: torch.Tensor | None) -> torch.Tensor:
    """transformers' image features of one image's sub-images ``[n, 3, H, W]``."""
    kw = {} if pixel_mask is None else {"pixel_attention_mask": pixel_mask[None]}
    with torch.inference_mode():
        return model.get_image_features(pixel_values=pixel_values[None], **kw).pooler_output[0]


@pytest.mark.parametrize("name", ["split", "nosplit"])
def test_features_equal_transformers(ckpts, hf_models, name):
    model, processor = hf_models[name]
    vm = vision(ckpts[name])
    imgs = [make_image(w, h, seed=i) for i, (w, h) in enumerate(SIZES)]
    items = vm.preprocess(imgs, [{} for _ in imgs])
    feats = vm.forward(items)  # all images in one batch
    for img, item, f in zip(imgs, items, feats):
        inp = processor.image_processor(images=[[img]], return_tensors="pt")
        assert torch.equal(item.data["pixel_values"], inp["pixel_values"][0])
        with torch.inference_mode():
            ref = model.get_image_features(pixel_values=inp["pixel_values"],
                                           pixel_attention_mask=inp["pixel_attention_mask"]).pooler_output[0]
        assert f.shape == ref.shape == (item.num_tokens, model.config.text_config.hidden_size), img.size
        torch.testing.assert_close(f, ref, atol=ATOL, rtol=ATOL)
        rows, cols = item.meta["rows"], item.meta["cols"]
        assert item.num_tiles == (rows * cols + 1 if name == "split" else 1) == inp["pixel_values"].shape[1]


def test_tile_order_is_row_major_then_global(ckpts, hf_models):
    """Each tile's rows, in the order the prompt's <image> runs appear, are that tile's features."""
    model, _ = hf_models["split"]
    vm = vision(ckpts["split"])
    (item,) = vm.preprocess([make_image(300, 120, seed=5)], [{}])
    (f,) = vm.forward([item])
    px = item.data["pixel_values"]
    seq = vm.image_seq_len
    for t in range(px.shape[0]):
        torch.testing.assert_close(f[t * seq:(t + 1) * seq], reference(model, px[t:t + 1], None), atol=ATOL, rtol=ATOL)


@pytest.mark.parametrize("valid", [(48, 30), (20, 48), (17, 9), (48, 48)])
def test_padded_tiles_equal_transformers(ckpts, hf_models, valid):
    """A tile padded on the bottom/right (pixel_attention_mask zeros) goes through NaViT-style
    position ids and key masking exactly as transformers does; the padded patches stay in the
    sequence (the connector shuffles them too)."""
    from vlkit_plugin_idefics3.modeling import Idefics3Vision

    model, _ = hf_models["split"]
    vm = vision(ckpts["split"])
    g = torch.Generator().manual_seed(0)
    px = torch.randn(2, 3, 48, 48, generator=g)
    mask = torch.ones(2, 48, 48, dtype=torch.long)
    h, w = valid
    mask[0, h:, :] = 0
    mask[0, :, w:] = 0
    px[0] = px[0] * mask[0]  # what padding leaves
    ref = reference(model, px, mask)
    assert isinstance(vm.model, Idefics3Vision)
    with torch.inference_mode():
        got = vm.model(px, mask.bool()).reshape(-1, ref.shape[-1])
    torch.testing.assert_close(got, ref, atol=ATOL, rtol=ATOL)
    if valid != (48, 48):  # the mask matters: without it the padded tile encodes differently
        with torch.inference_mode():
            unmasked = vm.model(px, None).reshape(-1, ref.shape[-1])
        assert not torch.allclose(unmasked[:9], ref[:9], atol=1e-3)


def test_items_with_padding_masks_in_forward(ckpts, hf_models):
    from vlkit.plugin import ImageItem

    model, _ = hf_models["split"]
    vm = vision(ckpts["split"])
    px = torch.randn(1, 3, 48, 48, generator=torch.Generator().manual_seed(1))
    mask = torch.zeros(1, 48, 48, dtype=torch.bool)
    mask[:, :32, :40] = True
    padded = ImageItem(num_tokens=9, data={"pixel_values": px * mask, "pixel_attention_mask": mask})
    (plain,) = vm.preprocess([make_image(64, 64, seed=9)], [{}])
    a, b = vm.forward([plain, padded])
    torch.testing.assert_close(b, reference(model, px * mask, mask.long()), atol=ATOL, rtol=ATOL)
    torch.testing.assert_close(a, vm.forward([plain])[0], atol=ATOL, rtol=ATOL)


def test_only_vision_tensors_are_built(ckpts):
    vm = vision(ckpts["split"])
    names = set(vm.model.state_dict())
    assert names and all(n.startswith(("vision_model.", "connector.")) for n in names)
    assert not any("text_model" in n or "lm_head" in n for n in names)


def test_sharded_checkpoint_loads(ckpts, hf_models):
    model, processor = hf_models["tied"]
    vm = vision(ckpts["tied"])
    img = make_image(200, 150, seed=3)
    (item,) = vm.preprocess([img], [{}])
    inp = processor.image_processor(images=[[img]], return_tensors="pt")
    ref = reference(model, inp["pixel_values"][0], inp["pixel_attention_mask"][0])
    torch.testing.assert_close(vm.forward([item])[0], ref, atol=ATOL, rtol=ATOL)


def _rewrite(src: Path, dst: Path, edit) -> Path:
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    tensors = load_file(str(dst / "model.safetensors"))
    edit(tensors)
    save_file(tensors, str(dst / "model.safetensors"), metadata={"format": "pt"})
    return dst


def test_missing_vision_tensor_is_a_clear_error(ckpts, tmp_path):
    name = "model.vision_model.encoder.layers.1.mlp.fc2.weight"
    path = _rewrite(ckpts["split"], tmp_path / "m", lambda t: t.pop(name))
    with pytest.raises(WeightLoadError, match="missing") as info:
        vision(path)
    assert name in str(info.value)


def test_misshaped_and_unexpected_vision_tensors(ckpts, tmp_path):
    def edit(t):
        t["model.connector.modality_projection.proj.weight"] = torch.zeros(3, 3)
        t["model.vision_model.head.weight"] = torch.zeros(2)

    path = _rewrite(ckpts["split"], tmp_path / "m", edit)
    with pytest.raises(WeightLoadError) as info:
        vision(path)
    msg = str(info.value)
    assert "model.connector.modality_projection.proj.weight" in msg and "(3, 3)" in msg
    assert "model.vision_model.head.weight" in msg and "unexpected" in msg

    path2 = _rewrite(ckpts["split"], tmp_path / "u", lambda t: t.__setitem__("model.connector.extra", torch.zeros(1)))
    with pytest.raises(WeightLoadError, match=r"1 unexpected tensor\(s\): model\.connector\.extra"):
        vision(path2)


def test_tile_size_mismatch_is_refused(ckpts, tmp_path):
    from vlkit_plugin_idefics3.vision import Idefics3ConfigError

    path = tmp_path / "c"
    shutil.copytree(ckpts["split"], path)
    cfg = json.loads((path / "processor_config.json").read_text())
    cfg["image_processor"]["max_image_size"] = {"longest_edge": 64}
    (path / "processor_config.json").write_text(json.dumps(cfg))
    vm = Idefics3VisionModel(None, json.loads((path / "config.json").read_text()), path)
    with pytest.raises(Idefics3ConfigError, match="64 px"):
        vm.build_preprocessor()


def test_bfloat16_build(ckpts):
    vm = Idefics3VisionModel(None, json.loads((ckpts["split"] / "config.json").read_text()), ckpts["split"])
    vm.to("cpu", torch.bfloat16)
    vm.build_preprocessor()
    vm.build_model()
    (item,) = vm.preprocess([make_image(120, 300, seed=1)], [{}])
    (f,) = vm.forward([item])
    assert f.dtype == torch.bfloat16 and f.shape == (item.num_tokens, 64)
