"""MobileVLM's vision side: the CLIP tower against transformers' ``CLIPVisionModel``, the
preprocessing against the original ``process_images`` (re-derived: ``expand2square`` with the
mean colour, then ``CLIPImageProcessor``), where the tower's weights come from, and errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from vlkit_plugin_mobilevlm.checkpoints import clip_tower_path
from vlkit_plugin_mobilevlm.layout import MobileVLMConfigError
from vlkit_plugin_mobilevlm.modeling import CLIPTower
from vlkit_plugin_mobilevlm.vision import MobileVLMVisionModel, MobileVLMWeightError, expand_to_square

from vlkit.config import VisionConfig
from vlkit.testing.images import make_image

SIZES = [(64, 64), (300, 120), (120, 300), (10, 10), (77, 64), (43, 129), (500, 90)]


def images() -> list:
    return [make_image(w, h, seed=i) for i, (w, h) in enumerate(SIZES)]


def vision(path: Path, config: dict | None = None) -> MobileVLMVisionModel:
    vm = MobileVLMVisionModel(None, config or json.loads((path / "config.json").read_text()), path, VisionConfig())
    vm.build_preprocessor()
    vm.build_model()
    return vm


def encode(vm: MobileVLMVisionModel, imgs: list) -> list[torch.Tensor]:
    return vm.forward(vm.preprocess(imgs, [{} for _ in imgs]))


@pytest.fixture(scope="module")
def eager(ckpts):
    from vlkit_plugin_mobilevlm.testing import EagerMobileVLM

    return {k: EagerMobileVLM(ckpts[k]) for k in ("v1", "v2", "v1-notower")}


def _hf_tower(path: Path, prefix: str, tower_dir: Path):
    """transformers' CLIPVisionModel with the tensors under ``prefix`` of ``path``'s weights."""
    from transformers import CLIPVisionConfig, CLIPVisionModel
    from vlkit_plugin_mobilevlm.weights import read_tensors

    cfg = json.loads((tower_dir / "config.json").read_text())
    model = CLIPVisionModel(CLIPVisionConfig(**{k: v for k, v in cfg.items() if k != "model_type"})).eval()
    state = read_tensors(path, lambda n: n[len(prefix):] if n.startswith(prefix) else None)
    want = model.state_dict()  # transformers 5 has no "vision_model." level, 4 has
    model.load_state_dict({k if k in want else "vision_model." + k: v for k, v in state.items()}, strict=True)
    return model


@pytest.mark.parametrize("layers", [1, 2, 3])
def test_clip_tower_equals_transformers_hidden_states(ckpts, layers):
    """Our tower stopped after N layers == transformers' ``hidden_states[N]`` (fused qkv too)."""
    from vlkit_plugin_mobilevlm.weights import read_tensors

    path = ckpts["v1"]
    prefix = "model.vision_tower.vision_tower.vision_model."
    hf = _hf_tower(path, prefix, clip_tower_path(path))
    cfg = hf.config.to_dict()
    ours = CLIPTower(cfg, layers).eval()
    state = read_tensors(path, lambda n: n[len(prefix):] if n.startswith(prefix) else None)
    ours.load_state_dict({k: v for k, v in state.items() if k in ours.state_dict()}, strict=True)
    px = torch.randn(3, 3, cfg["image_size"], cfg["image_size"])
    with torch.inference_mode():
        ref = hf(pixel_values=px, output_hidden_states=True).hidden_states[layers]
        torch.testing.assert_close(ours(px), ref, atol=1e-5, rtol=1e-5)
        ours.fuse()
        torch.testing.assert_close(ours(px), ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["v1", "v2", "v1-notower"])
def test_features_equal_eager_transformers_composition(ckpts, eager, name):
    """Pixels + CLIP hidden_states[-2][:, 1:] + projector, against transformers' CLIPVisionModel,
    LlavaImageProcessor(do_pad) and the pinned projector, image by image and batched."""
    vm = vision(ckpts[name])
    imgs = images()
    feats = encode(vm, imgs)
    ref = eager[name].encode_images(imgs)
    assert len(feats) == len(imgs)
    for f, r in zip(feats, ref):
        assert f.shape == r.shape == (vm.num_tokens, vm.layout.lm_hidden)
        torch.testing.assert_close(f, r, atol=1e-5, rtol=1e-5)
    one = encode(vm, imgs[1:2])[0]
    torch.testing.assert_close(one, feats[1], atol=1e-5, rtol=1e-5)


def test_token_counts(ckpts):
    assert vision(ckpts["v1"]).num_tokens == 9  # 6x6 patches -> stride-2 LDP -> 3x3
    assert vision(ckpts["v2"]).num_tokens == 144  # 16x16 patches -> pooled to 12x12


def _original_process_images(img, processor):
    """``mobilevlm.utils.process_images`` for ``image_aspect_ratio == "pad"`` (re-derived)."""
    from PIL import Image

    fill = tuple(int(x * 255) for x in processor.image_mean)
    w, h = img.size
    if w != h:
        side = max(w, h)
        canvas = Image.new(img.mode, (side, side), fill)
        canvas.paste(img, (0, (side - h) // 2) if w > h else ((side - w) // 2, 0))
        img = canvas
    return processor.preprocess(img, return_tensors="pt")["pixel_values"][0]


def test_preprocessing_equals_original_process_images(ckpts):
    import transformers

    vm = vision(ckpts["v2"])
    cls = getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor
    proc = cls.from_pretrained(str(clip_tower_path(ckpts["v2"])))
    imgs = images()
    items = vm.preprocess(imgs, [{} for _ in imgs])
    for img, item in zip(imgs, items):
        torch.testing.assert_close(item.data["pixel_values"], _original_process_images(img, proc), atol=0, rtol=0)


def test_expand_to_square_centres_on_the_mean_colour():
    img = make_image(30, 10, seed=1)
    sq = expand_to_square(img, (122, 116, 104))
    assert sq.size == (30, 30)
    assert sq.getpixel((0, 0)) == (122, 116, 104) and sq.getpixel((29, 29)) == (122, 116, 104)
    assert sq.crop((0, 10, 30, 20)).tobytes() == img.tobytes()
    tall = img.rotate(90, expand=True)  # 10x30
    assert expand_to_square(tall, (0, 0, 0)).crop((10, 0, 20, 30)).tobytes() == tall.tobytes()


def test_checkpoint_tower_weights_win_over_mm_vision_tower(ckpts, eager):
    """V2 fine-tuned its tower: the checkpoint's copy is used, not the (different) hub tower."""
    vm = vision(ckpts["v2"])
    assert vm.tower_in_checkpoint
    imgs = images()[:2]
    mine = encode(vm, imgs)
    # the same checkpoint without its tower copy falls back to mm_vision_tower: other features
    cfg = json.loads((ckpts["v2"] / "config.json").read_text())
    from vlkit_plugin_mobilevlm.weights import read_tensors

    assert any(
        not torch.equal(a, b)
        for a, b in zip(
            read_tensors(ckpts["v2"], lambda n: n if n.startswith("model.vision_tower.") else None).values(),
            read_tensors(Path(cfg["mm_vision_tower"]), lambda n: n).values(),
        )
    )
    torch.testing.assert_close(mine[0], eager["v2"].encode_images(imgs)[0], atol=1e-5, rtol=1e-5)


def test_tower_from_mm_vision_tower_when_absent(ckpts):
    vm = vision(ckpts["v1-notower"])
    assert not vm.tower_in_checkpoint
    assert vm.tower_dir == clip_tower_path(ckpts["v1-notower"])


def test_mm_vision_tower_relative_to_checkpoint(ckpts, tmp_path):
    path = tmp_path / "m"
    shutil.copytree(ckpts["v1-notower"], path)
    shutil.copytree(clip_tower_path(ckpts["v1-notower"]), path / "clip")
    cfg = json.loads((path / "config.json").read_text())
    cfg["mm_vision_tower"] = "clip"
    vm = vision(path, cfg)
    assert vm.tower_dir == path / "clip"


def test_missing_tower_names_what_it_tried(ckpts, tmp_path):
    path = tmp_path / "m"
    shutil.copytree(ckpts["v1-notower"], path)
    cfg = json.loads((path / "config.json").read_text())
    cfg["mm_vision_tower"] = str(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="mm_vision_tower"):
        MobileVLMVisionModel(None, cfg, path, VisionConfig())


def test_missing_projector_tensor_is_named(ckpts, tmp_path):
    from vlkit_plugin_mobilevlm.weights import read_tensors

    from vlkit.testing.checkpoint import write_safetensors

    path = tmp_path / "m"
    path.mkdir()
    for f in ckpts["v1"].iterdir():
        if f.suffix != ".bin":
            shutil.copy(f, path / f.name)
    state = read_tensors(ckpts["v1"], lambda n: n)
    del state["model.mm_projector.model.mlp.1.weight"]
    state["model.mm_projector.model.mlp.3.bias"] = torch.zeros(3)
    write_safetensors(path, state)
    vm = MobileVLMVisionModel(None, json.loads((path / "config.json").read_text()), path, VisionConfig())
    with pytest.raises(MobileVLMWeightError) as info:
        vm.build_model()
    msg = str(info.value)
    assert "model.mm_projector.model.mlp.1.weight" in msg and "model.mm_projector.model.mlp.3.bias" in msg


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"vision_tower_type": "siglip"}, "vision_tower_type"),
        ({"mm_projector_type": "qformer"}, "mm_projector_type"),
        ({"mm_vision_tower": None}, "mm_vision_tower"),
        ({"mm_hidden_size": 48}, "mm_hidden_size"),
        ({"mm_vision_select_feature": "cls_patch"}, "mm_vision_select_feature"),
    ],
)
def test_bad_config_names_the_field(ckpts, change, field):
    cfg = json.loads((ckpts["v1"] / "config.json").read_text())
    cfg.update(change)
    with pytest.raises(MobileVLMConfigError, match=field):
        MobileVLMVisionModel(None, cfg, ckpts["v1"], VisionConfig())


def test_per_image_options_are_refused(ckpts):
    vm = vision(ckpts["v1"])
    with pytest.raises(ValueError, match="max_dynamic_patch"):
        vm.preprocess([make_image(20, 20)], [{"max_dynamic_patch": 2}])


def test_bf16_vision_runs_close_to_fp32(ckpts):
    vm = vision(ckpts["v2"])
    imgs = images()[:3]
    ref = encode(vm, imgs)
    low = MobileVLMVisionModel(None, json.loads((ckpts["v2"] / "config.json").read_text()), ckpts["v2"], VisionConfig())
    low.to("cpu", torch.bfloat16)
    low.build_preprocessor()
    low.build_model()
    got = encode(low, imgs)
    for a, b in zip(got, ref):
        assert a.dtype == torch.bfloat16
        assert (a.float() - b).abs().max() < 0.1 * b.abs().max() + 0.05
