"""The core's truncated CLIP tower (vlkit/towers/clip.py) against transformers' CLIPVisionModel."""

import pytest
import torch

from vlkit.towers.clip import CLIPTower, resolve_layers


@pytest.fixture(scope="module")
def clip():
    from transformers import CLIPVisionConfig, CLIPVisionModel

    cfg = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                           image_size=28, patch_size=7, hidden_act="quick_gelu")
    torch.manual_seed(0)
    model = CLIPVisionModel(cfg).eval()
    return cfg.to_dict(), model


def _tower(cfg, model, num_layers):
    tower = CLIPTower(cfg, num_layers).eval()
    own = {k.removeprefix("vision_model."): v for k, v in model.state_dict().items()}
    missing, _ = tower.load_state_dict(own, strict=False)
    assert missing == []  # every parameter the truncated tower has comes from the full model
    return tower


def test_hidden_states_equal_transformers_and_later_layers_are_not_built(clip):
    cfg, model = clip
    px = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        ref = model(px, output_hidden_states=True).hidden_states
        tower = _tower(cfg, model, 2)
        assert len(tower.encoder.layers) == 2
        for got, k in zip(tower.hidden_states(px, (2, 0, 1)), (2, 0, 1)):
            torch.testing.assert_close(got, ref[k], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(tower(px), ref[2], atol=1e-5, rtol=1e-5)
        fused = tower.fuse()  # one q/k/v matmul per layer: same values
        assert fused.encoder.layers[0].self_attn.qkv is not None
        torch.testing.assert_close(fused(px), ref[2], atol=1e-5, rtol=1e-5)


def test_wrong_image_size_and_layers_are_named(clip):
    cfg, model = clip
    tower = _tower(cfg, model, 1)
    with pytest.raises(ValueError, match="give 25 patches; the tower has position embeddings for 16"):
        tower(torch.randn(1, 3, 35, 35))
    assert resolve_layers((-2, 0), 3) == (2, 0)
    with pytest.raises(ValueError, match="select layer \\(-5,\\) out of range for a 3-layer tower"):
        resolve_layers((-5,), 3, "select layer")


def test_vision_model_load_weights_checks_names_and_shapes(tmp_path):
    from accelerate import init_empty_weights

    from vlkit.contract.vision import VisionModel

    class Tiny(VisionModel):
        build_preprocessor = build_model = preprocess = forward = None

    class Bad(ValueError):
        pass

    vm = Tiny(None, {}, tmp_path, None).to("cpu", torch.float32)
    cfg = {"hidden_size": 16, "intermediate_size": 32, "num_attention_heads": 2, "image_size": 14, "patch_size": 7}
    full = CLIPTower(cfg, 1).state_dict()
    with init_empty_weights():
        module = CLIPTower(cfg, 1)
    tensors = dict(full)
    del tensors["pre_layrnorm.bias"]
    tensors["embeddings.class_embedding"] = torch.zeros(17)
    with pytest.raises(Bad, match=r"tower weights of .* do not fit: missing 1 tensor\(s\): T/pre_layrnorm.bias; "
                                  r"wrong shape: T/embeddings.class_embedding expected \(16,\), got \(17,\)"):
        vm.load_weights(module, tensors, error=Bad, name_of=lambda k: "T/" + k, what="tower weights")
    loaded = vm.load_weights(module, dict(full))
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    assert torch.equal(loaded.state_dict()["pre_layrnorm.weight"], full["pre_layrnorm.weight"])


def test_clip_vision_config_takes_the_vision_half_and_refuses_other_towers():
    from vlkit.towers.clip import clip_vision_config

    full = {"model_type": "clip", "vision_config": {"hidden_size": 48, "image_size": 56}}
    cfg = clip_vision_config(full, "tower/config.json")
    assert cfg["hidden_size"] == 48 and cfg["image_size"] == 56 and cfg["hidden_act"] == "quick_gelu"

    class Bad(ValueError):
        pass

    with pytest.raises(Bad, match="tower/config.json: vision tower model_type 'siglip_vision_model' is not supported"):
        clip_vision_config({"model_type": "siglip_vision_model"}, "tower/config.json", Bad)


def test_resolve_tower_finds_directories_and_names_what_is_missing(tmp_path, monkeypatch):
    from vlkit.towers import resolve_tower

    ckpt = tmp_path / "ckpt"
    (ckpt / "clip").mkdir(parents=True)
    assert resolve_tower("clip", ckpt) == ckpt / "clip"  # relative to the checkpoint
    monkeypatch.chdir(tmp_path)
    assert resolve_tower("ckpt/clip", tmp_path / "elsewhere") == tmp_path / "ckpt" / "clip"  # to the cwd
    with pytest.raises(FileNotFoundError, match="mm_vision_tower '/no/such/clip' of .* is not a directory"):
        resolve_tower("/no/such/clip", ckpt)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="vision_tower 'nobody/no-such-tower' .* nor a reachable hub id"):
        resolve_tower("nobody/no-such-tower", ckpt, field="vision_tower")


def test_load_weights_raises_a_structured_weight_load_error(tmp_path):
    """VisionModel.load_weights(error=WeightLoadError), what a plugin naturally writes, raises that
    error with its missing and misshaped lists (it used to raise a TypeError)."""
    import pytest
    import torch

    from vlkit.plugin import ImageItem, VisionModel, WeightLoadError

    class VM(VisionModel):
        def build_preprocessor(self):
            return None

        def build_model(self):
            return None

        def preprocess(self, images, options):
            return [ImageItem(1, {}) for _ in images]

        def forward(self, items):
            return []

    vm = VM(None, {}, tmp_path)
    module = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    with pytest.raises(WeightLoadError) as e:
        vm.load_weights(module, {"0.weight": torch.zeros(3, 5), "0.bias": torch.zeros(3)}, error=WeightLoadError,
                        name_of=lambda k: "tower." + k)
    assert e.value.misshaped == [("tower.0.weight", (3, 4), (3, 5))]
    assert [n for n, _ in e.value.missing] == ["tower.1.weight", "tower.1.bias"]
    assert "tower.1.weight (expected shape (2, 3))" in str(e.value)
