"""LDP (``ldpnet``) and LDPv2 (``ldpnetv2``) against outputs of MobileVLM's own
``vision_projector.py`` (``tests/data/ldp_reference.safetensors``; ``tests/data/README.md`` says
exactly how it was made)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from vlkit_plugin_mobilevlm.layout import MobileVLMLayout
from vlkit_plugin_mobilevlm.modeling import LDPProjector, LDPv2Projector, build_projector

DATA = Path(__file__).parent / "data" / "ldp_reference.safetensors"
MM, HID = 32, 64


@pytest.fixture(scope="module")
def ref() -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(DATA))


def _part(ref: dict[str, torch.Tensor], kind: str, what: str) -> dict[str, torch.Tensor]:
    p = f"{kind}.{what}."
    return {k[len(p):]: v for k, v in ref.items() if k.startswith(p)}


def _projector(ref: dict[str, torch.Tensor], kind: str) -> torch.nn.Module:
    proj = build_projector(kind, MM, HID).eval()
    proj.load_state_dict(_part(ref, kind, "weights"), strict=True)  # the original's names, all of them
    return proj


@pytest.mark.parametrize("kind", ["ldpnet", "ldpnetv2"])
def test_parameter_names_and_shapes_are_the_originals(ref, kind):
    mine = {k: tuple(v.shape) for k, v in build_projector(kind, MM, HID).state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in _part(ref, kind, "weights").items()}
    assert mine == theirs


@pytest.mark.parametrize("kind", ["ldpnet", "ldpnetv2"])
def test_outputs_equal_the_original_code(ref, kind):
    proj = _projector(ref, kind)
    inputs = _part(ref, kind, "input")
    assert inputs
    for grid, x in inputs.items():
        with torch.inference_mode():
            y = proj(x)
        torch.testing.assert_close(y, ref[f"{kind}.output.{grid}"], atol=2e-5, rtol=1e-5, msg=f"{kind} {grid}")


@pytest.mark.parametrize("kind", ["ldpnet", "ldpnetv2"])
def test_batch_equals_one_at_a_time(ref, kind):
    proj = _projector(ref, kind)
    x = next(v for k, v in _part(ref, kind, "input").items() if v.shape[0] > 1)
    with torch.inference_mode():
        whole = proj(x)
        single = torch.cat([proj(x[i:i + 1]) for i in range(x.shape[0])])
    torch.testing.assert_close(whole, single, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("kind", ["ldpnet", "ldpnetv2"])
def test_channels_last_and_bf16_paths(ref, kind):
    """The CPU fast path (channels-last convs) gives the same numbers; bf16 stays close."""
    proj = _projector(ref, kind)
    grid, x = next(iter(_part(ref, kind, "input").items()))
    fast = _projector(ref, kind).to(memory_format=torch.channels_last)
    with torch.inference_mode():
        torch.testing.assert_close(fast(x), ref[f"{kind}.output.{grid}"], atol=2e-5, rtol=1e-5)
        low = proj.to(torch.bfloat16)(x.bfloat16()).float()
    assert (low - ref[f"{kind}.output.{grid}"]).abs().max() < 0.25 * ref[f"{kind}.output.{grid}"].abs().max()


@pytest.mark.parametrize(("grid", "tokens"), [(24, 144), (16, 64), (6, 9), (7, 16)])
def test_ldpnet_token_counts(grid, tokens):
    lay = MobileVLMLayout("ldpnet", -2, True, True, MM, HID, "clip")
    assert lay.num_tokens(grid) == tokens
    with torch.inference_mode():
        out = LDPProjector(MM, HID)(torch.randn(1, grid * grid, MM))
    assert out.shape == (1, tokens, HID)


@pytest.mark.parametrize("grid", [24, 16, 12, 7])
def test_ldpnetv2_always_144_tokens(grid):
    lay = MobileVLMLayout("ldpnetv2", -2, True, True, MM, HID, "clip")
    assert lay.num_tokens(grid) == 144
    with torch.inference_mode():
        out = LDPv2Projector(MM, HID)(torch.randn(2, grid * grid, MM))
    assert out.shape == (2, 144, HID)


def test_non_square_token_count_is_a_clear_error():
    with pytest.raises(ValueError, match="square"):
        LDPv2Projector(MM, HID)(torch.randn(1, 50, MM))


def test_ldpnet_needs_a_multiple_of_8():
    with pytest.raises(ValueError, match="multiple of 8"):
        LDPProjector(MM, 60)
