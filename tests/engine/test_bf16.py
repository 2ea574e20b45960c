"""``dtype="bfloat16"`` on CPU: the same tokens and (to bf16 precision) logits as transformers'
``LlamaForCausalLM`` run in bf16, fp32 where transformers keeps fp32, and oneDNN's bf16 GEMM."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from engine_helpers import hf_greedy, prompts

from vlkit.config import EngineConfig, GenerationConfig
from vlkit.engine import LLMEngine
from vlkit.layers import linear as L
from vlkit.layers.norm import RMSNorm

N_NEW = 16


@pytest.fixture(scope="module")
def hf_bf16(llama_path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(llama_path, dtype=torch.bfloat16).eval()


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def test_bf16_engine_matches_transformers_bf16(llama_path, hf_bf16):
    ps = prompts(6, seed=5)
    with LLMEngine.from_pretrained(llama_path, EngineConfig(num_blocks=64, dtype="bfloat16", device="cpu")) as eng:
        assert eng.runner.dtype == torch.bfloat16
        assert all(c.dtype == torch.bfloat16 for c in eng.runner.kv_caches)
        outs = [o.token_ids for o in eng.generate(ps, GenerationConfig(max_new_tokens=N_NEW, ignore_eos=True))]
        same = 0
        for p, o in zip(ps, outs):
            ref = hf_greedy(hf_bf16, p, N_NEW)
            # bf16 matmuls round differently in oneDNN and MKL: the same sequence until a near-tie
            same += _common_prefix(o, ref)
            with torch.inference_mode():
                hf_logits = hf_bf16(torch.tensor([p + o])).logits[0].float()
            got = eng.get_logits(p + o)
            assert got.dtype == torch.float32  # sampling sees fp32 logits
            # bf16 tolerance: logits are O(1) here, bf16 keeps ~3 significant digits per op
            torch.testing.assert_close(got, hf_logits, atol=0.06, rtol=0.02)
            n = len(p)
            assert (got[n - 1 : -1].argmax(-1) == hf_logits[n - 1 : -1].argmax(-1)).float().mean() >= 0.9
    print(f"bf16 vs transformers bf16: {same}/{len(ps) * N_NEW} greedy tokens before the first fork")
    assert same >= 0.75 * len(ps) * N_NEW  # all 96 on the development machine


def test_bf16_rmsnorm_keeps_fp32_variance_like_transformers():
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    x = torch.randn(7, 64).to(torch.bfloat16) * 30
    ours, ref = RMSNorm(64, 1e-6).to(torch.bfloat16), LlamaRMSNorm(64, 1e-6).to(torch.bfloat16)
    with torch.no_grad():
        ours.weight.normal_()
        ref.weight.copy_(ours.weight)
    torch.testing.assert_close(ours(x), ref(x), atol=0, rtol=0)


@pytest.mark.skipif(not L._onednn_linear_ok(torch.bfloat16), reason="no native bf16 oneDNN GEMM on this CPU")
def test_bf16_prepack_matches_f_linear(llama_path):
    layer = L.ReplicatedLinear(96, 40, bias=True).to(torch.bfloat16)
    with torch.no_grad():
        layer.weight.normal_()
        layer.bias.normal_()
    w, b = layer.weight.detach().clone(), layer.bias.detach().clone()
    assert L.prepack_linears(layer) == 1 and layer.weight.numel() == 0
    x = torch.randn(5, 96).to(torch.bfloat16)
    torch.testing.assert_close(layer(x).float(), F.linear(x, w, b).float(), atol=0.05, rtol=0.02)
    with LLMEngine.from_pretrained(llama_path, EngineConfig(num_blocks=16, dtype="bfloat16", device="cpu")) as eng:
        assert eng.runner.num_prepacked == 9
    lin = torch.nn.Sequential(torch.nn.Linear(96, 40)).to(torch.bfloat16)
    ref = lin(x)
    assert L.prepack_nn_linears(lin) == 0  # fp32 only unless asked
    assert L.prepack_nn_linears(lin, dtypes=(torch.bfloat16,)) == 1
    torch.testing.assert_close(lin(x).float(), ref.float(), atol=0.05, rtol=0.02)
