"""A Qwen2-VL checkpoint in the hub's AWQ and GPTQ-Int4 layouts (as Qwen/Qwen2-VL-2B-Instruct-AWQ
and -GPTQ-Int4: the language model's linear layers quantized, the vision tower and LM head
dense) runs through ``vlkit.pipeline`` with images, and answers as its exactly dequantized twin."""

from __future__ import annotations

import pytest

import vlkit
from vlkit.config import EngineConfig
from vlkit.layers.quant import QuantizedWeight
from vlkit.testing.conformance import make_test_image
from vlkit.testing.quantized import write_prequantized


@pytest.fixture(scope="module")
def qwen2_vl(tmp_path_factory):
    from vlkit_plugin_qwen import checkpoints

    return checkpoints.tiny_qwen2_vl(tmp_path_factory.mktemp("qwen2-vl") / "model", seed=3)


@pytest.mark.parametrize("method", ["awq", "gptq"])
def test_prequantized_qwen2_vl_with_images_equals_dense_twin(qwen2_vl, tmp_path, method):
    path, twin = write_prequantized(qwen2_vl, tmp_path / method, method, group_size=64, sym=method == "gptq")
    msgs = [{"role": "user", "content": [{"type": "image", "image": make_test_image("wide")},
                                         {"type": "text", "text": "What is in this image?"}]}]
    gen = vlkit.GenerationConfig(max_new_tokens=8, ignore_eos=True)
    with vlkit.pipeline(str(twin), engine_config=EngineConfig(device="cpu", dtype="float32", num_blocks=128)) as ref, \
            vlkit.pipeline(str(path), engine_config=EngineConfig(device="cpu", num_blocks=128)) as pipe:
        runner = pipe.engine.runner
        assert runner.quantization == f"{method}-int4"
        layer = runner.model.model.layers[0]
        assert isinstance(layer.mlp.gate_up_proj.packed_weight, QuantizedWeight)
        want, got = ref(msgs, gen_config=gen), pipe(msgs, gen_config=gen)
        assert got.token_ids[:2] == want.token_ids[:2]
        # prompt logits, image features included: the same weights, bf16 activations apart
        lr, lq = ref.get_logits(msgs), pipe.get_logits(msgs)
        assert lr.shape == lq.shape and (lq.float() - lr.float()).abs().max() < 0.1
