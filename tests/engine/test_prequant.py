"""AWQ / GPTQ 4-bit checkpoints: the formats against tensors the original libraries wrote
(tests/fixtures/quant, see its README), and whole engines on such checkpoints against their
exactly dequantized dense twins, TP=2 against TP=1, and the errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from engine_helpers import prompts
from safetensors.torch import load_file

from vlkit.config import EngineConfig, GenerationConfig
from vlkit.engine import LLMEngine
from vlkit.layers import prequant as P
from vlkit.layers.quant import QuantizedWeight
from vlkit.testing.quantized import pack_awq, pack_gptq, write_prequantized

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "quant"
GEN = GenerationConfig(max_new_tokens=12, ignore_eos=True)


def _fixture(name: str) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    t = load_file(str(FIXTURES / f"{name}.safetensors"))
    layer = {k.split(".", 1)[1]: v for k, v in t.items() if k.startswith("layer.")}
    ref = {k.split(".", 1)[1]: v for k, v in t.items() if k.startswith("ref.")}
    return layer, ref


def test_awq_gemm_fixture_unpacks_to_autoawq_dequantization():
    layer, ref = _fixture("awq_gemm")
    cfg = P.PrequantConfig("awq", 4, 128)
    w = P.dequantize_layer(cfg, layer)
    assert w.shape == (64, 256)
    torch.testing.assert_close(w, ref["weight_exact"], atol=1e-6, rtol=0)
    torch.testing.assert_close(w, ref["weight"], atol=1e-4, rtol=0)  # AutoAWQ's own (fp16 math)
    q, z = P.unpack_awq(layer["qweight"], layer["qzeros"])
    assert torch.equal(q.t().int(), ref["intweight"]) and torch.equal(z.int(), ref["zeros"])
    # AutoAWQ's CPU forward on the same input
    y = F.linear(ref["x"].float(), w)
    torch.testing.assert_close(y, ref["y"].float(), atol=2e-2, rtol=1e-2)
    # and vlkit's packer writes the same words
    qw, qz = pack_awq(q, z)
    assert torch.equal(qw, layer["qweight"]) and torch.equal(qz, layer["qzeros"])


@pytest.mark.parametrize("name,fmt", [("gptq_v1", "gptq"), ("gptq_v2", "gptq_v2"), ("gptq_v1_sym", "gptq")])
def test_gptq_fixtures_unpack_to_the_packed_codes(name, fmt):
    layer, ref = _fixture(name)
    cfg = P.PrequantConfig("gptq", 4, 128, checkpoint_format=fmt)
    w = P.dequantize_layer(cfg, layer)
    torch.testing.assert_close(w, ref["weight"], atol=1e-6, rtol=0)
    torch.testing.assert_close(w, ref["weight_lib"], atol=2e-4, rtol=0)  # AutoGPTQ's own forward
    q, z = P.unpack_gptq(layer["qweight"], layer["qzeros"], v1=fmt == "gptq")
    assert torch.equal(q.t().int(), ref["intweight"]) and torch.equal(z.t().int(), ref["zeros"].t())
    qw, qz = pack_gptq(q, z, v1=fmt == "gptq")
    assert torch.equal(qw, layer["qweight"]) and torch.equal(qz, layer["qzeros"])
    u, s, zero, grouped = P.layer_codes(cfg, layer)
    assert grouped and u.shape == (64, 256) and s.shape == (64, 2)


def test_gptq_act_order_fixture():
    layer, ref = _fixture("gptq_desc_act")
    cfg = P.PrequantConfig("gptq", 4, 128, desc_act=True)
    u, s, z, grouped = P.layer_codes(cfg, layer)
    assert not grouped and s.shape == (64, 256)  # one scale per input: groups are not runs
    torch.testing.assert_close(P.dequantize_layer(cfg, layer), ref["weight"], atol=1e-6, rtol=0)


def test_parse_config_accepts_and_refuses():
    assert P.parse_config({}) is None
    c = P.parse_config({"quantization_config": {"quant_method": "awq", "bits": 4, "group_size": 128,
                                                "zero_point": True, "version": "GEMM"}})
    assert c.method == "awq" and c.group_size == 128 and c.name == "awq-int4"
    c = P.parse_config({"quantization_config": {"quant_method": "gptq", "bits": 4, "group_size": 128,
                                                "desc_act": False, "sym": True}})
    assert c.checkpoint_format == "gptq" and c.sym
    for qc, msg in (({"quant_method": "gptq", "bits": 8, "group_size": 128}, "bits=8"),
                    ({"quant_method": "awq", "bits": 4, "version": "gemv"}, "version 'gemv'"),
                    ({"quant_method": "bitsandbytes", "load_in_4bit": True}, "'bitsandbytes'"),
                    ({"quant_method": "gptq", "bits": 4, "group_size": 128, "checkpoint_format": "marlin"}, "marlin")):
        with pytest.raises(ValueError, match=msg):
            P.parse_config({"quantization_config": qc})


# -- whole engines ---------------------------------------------------------------------------
VARIANTS = {
    "awq": dict(method="awq"),
    "gptq-v1": dict(method="gptq", checkpoint_format="gptq"),
    "gptq-v2": dict(method="gptq", checkpoint_format="gptq_v2"),
    "gptq-sym": dict(method="gptq", sym=True),
    "gptq-act-order": dict(method="gptq", desc_act=True),
}


@pytest.fixture(scope="module")
def prequantized(llama_path, tmp_path_factory):
    root = tmp_path_factory.mktemp("prequant")
    return {k: write_prequantized(llama_path, root / k, group_size=64, **kw) for k, kw in VARIANTS.items()}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_engine_on_prequantized_checkpoint_equals_its_dense_twin(prequantized, variant):
    path, twin = prequantized[variant]
    ps = prompts(3, seed=7)
    with LLMEngine.from_pretrained(str(twin), EngineConfig(num_blocks=64, dtype="float32", device="cpu")) as ref, \
            LLMEngine.from_pretrained(str(path), EngineConfig(num_blocks=64, device="cpu")) as eng:
        m = eng.runner.model
        assert eng.runner.dtype == torch.bfloat16 and eng.runner.quantization.endswith("int4")
        layer = m.model.layers[0]
        if variant == "gptq-act-order":  # dequantized, dense
            assert eng.runner.quant_report is None
            assert not isinstance(layer.self_attn.qkv_proj.packed_weight, QuantizedWeight)
        else:
            assert len(eng.runner.quant_report.quantized) == 8  # 2 x (qkv, o, gate_up, down); lm_head dense
            for mod in (layer.self_attn.qkv_proj, layer.mlp.down_proj):
                assert isinstance(mod.packed_weight, QuantizedWeight) and mod.weight.numel() == 0
                assert not hasattr(mod, "qscale")
            assert not isinstance(m.lm_head.packed_weight, QuantizedWeight)
        ref_toks = [o.token_ids for o in ref.generate(ps, GEN)]
        toks = [o.token_ids for o in eng.generate(ps, GEN)]
        for p, t in zip(ps, ref_toks):
            # the same weights (codes as stored); only bf16 activations apart
            assert (eng.get_logits(p + t) - ref.get_logits(p + t)).abs().max() < 0.1
        assert all(a[0] == b[0] for a, b in zip(toks, ref_toks))


def test_prequantized_tp2_equals_tp1(llama_path, tmp_path):
    # group 32: hidden 64 split over two ranks must stay whole groups in the row-parallel layers
    path, _ = write_prequantized(llama_path, tmp_path / "awq32", "awq", group_size=32)
    ps = prompts(2, seed=9)
    res = []
    for tp in (1, 2):
        with LLMEngine.from_pretrained(str(path), EngineConfig(tp=tp, num_blocks=64, device="cpu")) as eng:
            toks = [o.token_ids for o in eng.generate(ps, GEN)]
            ref = res[0][0][0] if res else toks[0]
            res.append((toks, eng.get_logits(ps[0] + ref)))
    (t1, l1), (t2, l2) = res
    assert (l1 - l2).abs().max() < 0.1
    assert [t[:4] for t in t1] == [t[:4] for t in t2]


def test_row_parallel_layer_needs_whole_groups_per_rank(prequantized):
    path, _ = prequantized["awq"]  # group 64, hidden 64: o_proj's 32 inputs a rank are half a group
    with pytest.raises(ValueError, match="not whole groups of 64"):
        LLMEngine.from_pretrained(str(path), EngineConfig(tp=2, num_blocks=16, device="cpu"))


def test_prequantized_refuses_another_quantization(prequantized):
    path, _ = prequantized["awq"]
    with pytest.raises(ValueError, match=r"already quantized \(awq-int4\)"):
        LLMEngine.from_pretrained(str(path), EngineConfig(num_blocks=16, device="cpu", quantization="int8"))


def test_unsupported_checkpoint_quantization_is_named(llama_path, tmp_path):
    import shutil

    d = tmp_path / "bnb"
    shutil.copytree(llama_path, d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_4bit": True}
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="quantized with 'bitsandbytes'"):
        LLMEngine.from_pretrained(str(d), EngineConfig(num_blocks=16, device="cpu"))


def test_internlm2_packed_wqkv_checkpoint_in_awq(internlm2_path, tmp_path):
    """InternLM2 (InternVL's LM) packs q/k/v per KV group in ``wqkv``: its scales and zeros are
    unpacked by the same routing as its weight."""
    path, twin = write_prequantized(internlm2_path, tmp_path / "awq", "awq", group_size=64)
    ps = prompts(2, seed=5)
    with LLMEngine.from_pretrained(str(twin), EngineConfig(num_blocks=64, dtype="float32", device="cpu")) as ref, \
            LLMEngine.from_pretrained(str(path), EngineConfig(num_blocks=64, device="cpu")) as eng:
        assert len(eng.runner.quant_report.quantized) == 8
        assert isinstance(eng.runner.model.model.layers[0].self_attn.qkv_proj.packed_weight, QuantizedWeight)
        ref_toks = [o.token_ids for o in ref.generate(ps, GEN)]
        for p, t in zip(ps, ref_toks):
            assert (eng.get_logits(p + t) - ref.get_logits(p + t)).abs().max() < 0.1

