import json

import pytest
import torch
from transformers import (
    CLIPImageProcessor,
    CLIPVisionConfig,
    CLIPVisionModel,
    LlavaConfig,
    SiglipImageProcessor,
    SiglipVisionConfig,
    SiglipVisionModel,
)

from vlkit.testing import (
    CLIP_MEAN,
    image_set,
    tiny_clip_vision_config,
    tiny_siglip_vision_config,
    write_tiny_clip_vision,
    write_tiny_siglip_vision,
)


def run_tower(model_cls, proc_cls, path, images):
    model, info = model_cls.from_pretrained(path, output_loading_info=True)
    proc = proc_cls.from_pretrained(path)
    pixels = proc(images=images, return_tensors="pt").pixel_values
    with torch.inference_mode():
        out = model.eval()(pixels, output_hidden_states=True)
    return info, pixels, out


def test_clip_tower_loads_with_clip_classes(tmp_path):
    path = write_tiny_clip_vision(tmp_path / "clip")
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "model.safetensors", "preprocessor_config.json"]
    cfg = json.loads((path / "config.json").read_text())
    assert cfg["model_type"] == "clip_vision_model" and cfg["architectures"] == ["CLIPVisionModel"]
    pre = json.loads((path / "preprocessor_config.json").read_text())
    assert pre["image_mean"] == CLIP_MEAN and pre["size"] == {"shortest_edge": 28}
    images = [image_set()["wide"], image_set()["tall"]]
    info, pixels, out = run_tower(CLIPVisionModel, CLIPImageProcessor, path, images)
    assert not any(info.values()), info
    assert pixels.shape == (2, 3, 28, 28)
    assert out.last_hidden_state.shape == (2, 1 + 4, 32)
    feats = out.hidden_states[-2][:, 1:]  # LLaVA's feature layer, CLS dropped
    assert feats.std() > 0.3 and not torch.allclose(feats[0], feats[1], atol=1e-2)


def test_full_clip_layout_loads_as_vision_model(tmp_path):
    path = write_tiny_clip_vision(tmp_path / "clip_full", full_clip=True, seed=1)
    cfg = json.loads((path / "config.json").read_text())
    assert cfg["model_type"] == "clip" and cfg["vision_config"]["hidden_size"] == 32
    info, _, out = run_tower(CLIPVisionModel, CLIPImageProcessor, path, [image_set()["square"]])
    assert not info["missing_keys"] and all(k.startswith(("text_", "logit_scale", "visual_projection"))
                                            for k in info["unexpected_keys"])
    assert out.last_hidden_state.shape == (1, 5, 32)


def test_siglip_tower_loads(tmp_path):
    path = write_tiny_siglip_vision(tmp_path / "siglip", image_size=56, patch_size=14)
    info, pixels, out = run_tower(SiglipVisionModel, SiglipImageProcessor, path, [image_set()["tall"]])
    assert not any(info.values()), info
    assert pixels.shape == (1, 3, 56, 56) and out.last_hidden_state.shape == (1, 16, 32)
    assert pixels.min() >= -1.0001 and pixels.max() <= 1.0001  # SigLIP's mean/std 0.5


@pytest.mark.parametrize("factory,cls", [(tiny_clip_vision_config, CLIPVisionConfig),
                                         (tiny_siglip_vision_config, SiglipVisionConfig)])
def test_vision_config_dicts(factory, cls):
    cfg = factory(num_layers=3)
    built = cls(**{k: v for k, v in cfg.items() if k != "model_type"})
    assert built.num_hidden_layers == 3 and built.model_type == cfg["model_type"]
    llava = LlavaConfig(vision_config=cfg, text_config={"model_type": "llama", "hidden_size": 64})
    assert isinstance(llava.vision_config, cls) and llava.vision_config.hidden_size == 32
