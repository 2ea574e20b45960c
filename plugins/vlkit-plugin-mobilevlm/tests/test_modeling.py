"""Direct parity: projectors vs the ORIGINAL MobileVLM code's outputs, tower vs transformers'
``CLIPVisionModel``, language model vs transformers' ``LlamaForCausalLM`` on the same weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from vlkit_plugin_mobilevlm.modeling import LDPProjector, LDPv2Projector, build_projector

DATA = Path(__file__).parent / "data" / "ldp_reference.safetensors"


@pytest.fixture(scope="module")
def original() -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(DATA))


def _weights(original: dict[str, torch.Tensor], version: str) -> dict[str, torch.Tensor]:
    p = f"{version}.weight."
    return {k[len(p):]: v for k, v in original.items() if k.startswith(p)}


@pytest.mark.parametrize("version,cls,grid", [("v1", LDPProjector, 6), ("v1", LDPProjector, 5), ("v2", LDPv2Projector, 16)])
def test_projector_matches_original_code(original, version, cls, grid) -> None:
    proj = cls(32, 64).eval()
    proj.load_state_dict(_weights(original, version), strict=True)  # the original's names, as stored
    x, want = original[f"{version}.grid{grid}.input"], original[f"{version}.grid{grid}.output"]
    with torch.inference_mode():
        got = proj(x)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_factory_writes_the_stored_projector_weights(ckpts, original, version) -> None:
    from vlkit.engine.loader import read_tensors

    pre = "model.mm_projector."
    got = read_tensors(ckpts[version], lambda n: n[len(pre):] if n.startswith(pre) else None)
    want = _weights(original, version)
    assert sorted(got) == sorted(want)
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=0, atol=0)


def test_ldp_token_counts() -> None:
    v1, v2 = build_projector("ldpnet", 8, 16), build_projector("ldpnetv2", 8, 16)
    with torch.inference_mode():
        assert v1(torch.randn(3, 24 * 24, 8)).shape == (3, 144, 16)  # 576 -> 144, as released
        assert v1(torch.randn(1, 16 * 16, 8)).shape == (1, 64, 16)  # W1: 256 -> 64
        assert v2(torch.randn(2, 24 * 24, 8)).shape == (2, 144, 16)
        assert v2(torch.randn(2, 16 * 16, 8)).shape == (2, 144, 16)
    with pytest.raises(ValueError, match="square"):
        v2(torch.randn(1, 10, 8))


def _vision_model(ckpt: Path):
    from vlkit_plugin_mobilevlm.vision import MobileVLMVisionModel

    from vlkit.contract.registry import get_registry

    cfg = json.loads((ckpt / "config.json").read_text())
    vm = MobileVLMVisionModel(get_registry().get_family("mobilevlm"), cfg, ckpt)
    vm.build_preprocessor()
    vm.build_model()
    return vm


@pytest.mark.parametrize("which", ["v1", "v2", "v2-st", "v1-notower"])
def test_vision_matches_transformers_clip(ckpts, which) -> None:
    """Tower layer -2 (CLS dropped) + projector == transformers CLIPVisionModel + the projector,
    on the checkpoint's tower weights (or mm_vision_tower's when the checkpoint has none)."""
    from vlkit_plugin_mobilevlm.testing import EagerMobileVLM

    from vlkit.testing.images import make_image

    ckpt = ckpts[which]
    vm = _vision_model(ckpt)
    ref = EagerMobileVLM(ckpt)
    images = [make_image(60, 40, seed=1), make_image(33, 90, seed=2), make_image(50, 50, seed=3)]
    items = vm.preprocess(images, [{}] * 3)
    got = torch.stack(vm.forward(items))
    want = ref.encode_images(images)
    assert got.shape == want.shape == (3, vm.num_tokens, 64)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    # the pixels themselves: pad with the mean colour, then CLIP's processor
    px = torch.stack([it.data["pixel_values"] for it in items])
    ref_px = torch.as_tensor(ref.processor(images=images, return_tensors="pt")["pixel_values"])
    torch.testing.assert_close(px, ref_px, rtol=0, atol=1e-6)


def test_v2_uses_the_checkpoint_tower_not_mm_vision_tower(ckpts) -> None:
    """V2 fine-tuned its tower: the standalone tower the factory writes holds other weights."""
    from transformers import CLIPVisionModel
    from vlkit_plugin_mobilevlm.checkpoints import clip_tower_path

    from vlkit.testing.images import make_image

    vm = _vision_model(ckpts["v2"])
    px = torch.stack([it.data["pixel_values"] for it in vm.preprocess([make_image(40, 40)], [{}])])
    standalone = CLIPVisionModel.from_pretrained(str(clip_tower_path(ckpts["v2"]))).eval()
    with torch.inference_mode():
        mine = vm.model.tower(px)
        theirs = standalone(pixel_values=px, output_hidden_states=True).hidden_states[-2]
    assert (mine - theirs).abs().max() > 1e-3


def test_language_model_matches_transformers_llama(ckpts) -> None:
    """The core's LLaMA backbone, loaded through this plugin's LanguageModelSpec from the
    ``.bin`` checkpoint (tower and projector tensors skipped), == ``LlamaForCausalLM``."""
    from vlkit_plugin_mobilevlm.testing import EagerMobileVLM

    import vlkit
    from vlkit.config import EngineConfig

    ckpt = ckpts["v1"]
    ref = EagerMobileVLM(ckpt)
    msgs = [{"role": "user", "content": [{"type": "text", "text": "Tell me about the lighthouse keeper."}]}]
    with vlkit.pipeline(ckpt, engine_config=EngineConfig(device="cpu", dtype="float32", num_blocks=64)) as pipe:
        inputs = pipe.prepare_inputs(msgs)
        logits = pipe.get_logits(inputs).float()
    ids = torch.tensor([inputs["input_ids"]])
    assert inputs["input_ids"] == ref.prompt_ids(msgs)
    with torch.inference_mode():
        want = ref.lm(input_ids=ids).logits[0]
    torch.testing.assert_close(logits, want, rtol=0, atol=1e-4)
