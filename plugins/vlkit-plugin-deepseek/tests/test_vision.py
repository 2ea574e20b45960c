"""The VisionModel against transformers' ``get_image_features`` on the same tiny weights, in all
three layouts (the original one fed the same pixels), and its weight loading."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import torch.nn.functional as F
from vlkit_plugin_deepseek import checkpoints as C
from vlkit_plugin_deepseek.vision import DeepseekVisionModel, DeepseekWeightError

from vlkit.contract.vision import ImageItem


def vision(path):
    v = DeepseekVisionModel(None, json.loads((path / "config.json").read_text()), path)
    v.build_preprocessor()
    v.build_model()
    return v


@pytest.fixture(scope="module")
def hf_models(ckpts):
    from transformers import DeepseekVLForConditionalGeneration, DeepseekVLHybridForConditionalGeneration

    return {
        "hf": DeepseekVLForConditionalGeneration.from_pretrained(ckpts["hf"]).eval(),
        "hybrid": DeepseekVLHybridForConditionalGeneration.from_pretrained(ckpts["hybrid"]).eval(),
    }


def test_siglip_layouts_match_transformers(ckpts, hf_models):
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = hf_models["hf"].model.get_image_features(x).pooler_output
    assert ref.shape == (3, 16, 64)
    for name in ("hf", "orig13"):
        v = vision(ckpts[name])
        assert v.num_tokens == 16
        out = torch.stack(v.forward([ImageItem(16, {"pixel_values": x[i]}) for i in range(3)]))
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5, msg=f"{name} layout")


def test_hybrid_layouts_match_transformers(ckpts, hf_models):
    hi = torch.rand(2, 3, 128, 128, generator=torch.Generator().manual_seed(1))
    # the original model's own steps: SigLIP input resized from the SAM input, each tower normalises
    lo = F.interpolate(hi, size=(48, 48), mode="bilinear", align_corners=False, antialias=True)
    clip_m, clip_s = torch.tensor(C.CLIP_MEAN).view(1, 3, 1, 1), torch.tensor(C.CLIP_STD).view(1, 3, 1, 1)
    hin, lin = (hi - clip_m) / clip_s, (lo - 0.5) / 0.5
    with torch.no_grad():
        ref = hf_models["hybrid"].model.get_image_features(lin, hin).pooler_output
    assert ref.shape == (2, 576, 64)
    v = vision(ckpts["hybrid"])
    out = torch.stack(v.forward([ImageItem(576, {"pixel_values": lin[i], "high_res_pixel_values": hin[i]})
                                 for i in range(2)]))
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    v = vision(ckpts["orig7"])
    assert v.num_tokens == 576  # SAM's features are resized to 96x96 and downsampled twice
    out = torch.stack(v.forward([ImageItem(576, {"pixel_values": hi[i]}) for i in range(2)]))
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_hybrid_uses_the_global_block_and_alpha(ckpts):
    """The SAM path adds ``neck_hd`` of the first global block times ``hd_alpha``: with alpha 0
    the output changes (so that branch is really wired)."""
    v = vision(ckpts["orig7"])
    x = torch.rand(1, 3, 128, 128, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        a = v.model(x)
        v.model.vision_tower_high.hd_alpha_downsamples.zero_()
        b = v.model(x)
    assert not torch.allclose(a, b)


def test_only_vision_tensors_are_read(ckpts, monkeypatch):
    from vlkit_plugin_deepseek import vision as V

    seen = []
    real = V.read_tensors

    def spy(path, select):
        def sel(name):
            new = select(name)
            if new is not None:
                seen.append(name)
            return new
        return real(path, sel)

    monkeypatch.setattr(V, "read_tensors", spy)
    for name in ("hybrid", "orig7"):
        seen.clear()
        vision(ckpts[name])
        assert seen and not any("language_model" in n or n.startswith("lm_head") for n in seen)
        # stored by the original but never run: SigLIP's attention-pool head, the hybrid's two LayerNorms
        assert not any("attn_pool" in n or n.startswith(("vision_model.high_layer_norm", "vision_model.low_layer_norm"))
                       for n in seen)


def test_missing_vision_tensor_is_named(ckpts, tmp_path):
    d = tmp_path / "broken"
    shutil.copytree(ckpts["orig13"], d)
    state = torch.load(d / "pytorch_model.bin", weights_only=True)
    del state["aligner.layers.2.weight"]
    torch.save(state, d / "pytorch_model.bin")
    with pytest.raises(DeepseekWeightError, match=r"aligner\.layers\.2\.weight"):
        vision(d)
