"""oneDNN prepacking of linear weights on CPU fp32 (vlkit/layers/linear.py)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vlkit.layers import linear as L

needs_onednn = pytest.mark.skipif(not L._onednn_linear_ok(), reason="this torch build has no usable oneDNN linear")


class Tower(nn.Module):
    """A stand-in for a plugin's vision model: plain layers, a subclass, a bf16 layer."""

    class MyLinear(nn.Linear):
        pass

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(32, 64)
        self.fc2 = nn.Linear(64, 16, bias=False)
        self.custom = Tower.MyLinear(16, 16)
        self.bf16 = nn.Linear(16, 16).to(torch.bfloat16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.custom(self.fc2(torch.relu(self.fc1(x))))


@needs_onednn
def test_plain_linears_run_through_onednn_with_the_same_results():
    torch.manual_seed(0)
    tower = Tower()
    x = torch.randn(3, 7, 32)
    want = tower(x)
    state = {k: v.clone() for k, v in tower.state_dict().items()}
    assert L.prepack_nn_linears(tower) == 2
    assert type(tower.fc1) is L.PackedLinear and type(tower.fc2) is L.PackedLinear
    assert type(tower.custom) is Tower.MyLinear  # subclasses may override forward: left alone
    assert type(tower.bf16) is nn.Linear  # not fp32
    torch.testing.assert_close(tower(x), want, atol=1e-5, rtol=1e-5)
    # the dense weights stay readable: state dicts, shapes and reloads keep working
    assert all(torch.equal(state[k], v) for k, v in tower.state_dict().items())
    assert tower.fc1.weight.shape == (64, 32)


def test_onednn_can_be_turned_off(monkeypatch):
    monkeypatch.setenv("VLKIT_ONEDNN", "0")
    tower = Tower()
    assert L.prepack_nn_linears(tower) == 0
    assert type(tower.fc1) is nn.Linear


@needs_onednn
def test_engine_layers_are_packed_and_release_the_dense_copy():
    layer = L.ReplicatedLinear(32, 48, bias=True)
    torch.nn.init.normal_(layer.weight)
    torch.nn.init.normal_(layer.bias)
    x = torch.randn(5, 32)
    want = layer(x)
    assert L.prepack_linears(layer) == 1
    assert layer.packed_weight is not None and layer.weight.numel() == 0
    torch.testing.assert_close(layer(x), want, atol=1e-5, rtol=1e-5)


@needs_onednn
def test_a_pipelines_vision_model_is_packed_on_cpu_fp32(tmp_path):
    import vlkit
    from vlkit.contract.registry import get_registry

    try:
        fam = get_registry().get_family("llava")
    except KeyError:
        pytest.skip("vlkit-plugin-llava is not installed")
    path = fam.tiny_checkpoint(tmp_path / "tiny-llava")
    with vlkit.pipeline(path, engine_config=vlkit.EngineConfig(num_blocks=64)) as pipe:
        kinds = {type(m) for m in pipe.vision.model.modules()}
    assert L.PackedLinear in kinds and nn.Linear not in kinds
