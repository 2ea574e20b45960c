"""The language model: vlkit's engine on the LanguageModelSpec of a MobileVLM checkpoint against
transformers' ``LlamaForCausalLM`` holding the same tensors (``model.*``, ``lm_head.*``)."""

from __future__ import annotations

import pytest
import torch

from vlkit.config import ChatTemplateConfig, EngineConfig, GenerationConfig, VisionConfig

PROMPTS = [[1, 5, 17, 300, 42, 9], [1, 900, 3, 3, 3, 77, 12, 500, 8, 64, 2, 99], [1, 7]]


@pytest.fixture(scope="module", params=["v1", "v2-st"])
def pair(request, ckpts):
    from vlkit_plugin_mobilevlm.testing import EagerMobileVLM

    import vlkit

    path = ckpts[request.param]
    pipe = vlkit.pipeline(
        str(path), engine_config=EngineConfig(device="cpu", dtype="float32", num_blocks=128),
        vision_config=VisionConfig(), chat_template_config=ChatTemplateConfig(),
    )
    yield pipe, EagerMobileVLM(path)
    pipe.close()


def test_greedy_tokens_equal_transformers(pair):
    pipe, ref = pair
    gen = GenerationConfig(max_new_tokens=12, ignore_eos=True)
    outs = pipe.engine.generate(PROMPTS, gen)
    for p, o in zip(PROMPTS, outs):
        with torch.inference_mode():
            hf = ref.lm.generate(
                torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long), max_new_tokens=12,
                min_new_tokens=12, do_sample=False, num_beams=1, pad_token_id=0, eos_token_id=None,
            )[0, len(p):].tolist()
        assert o.token_ids == hf


def test_prompt_logits_equal_transformers(pair):
    pipe, ref = pair
    for p in PROMPTS:
        with torch.inference_mode():
            want = ref.lm(torch.tensor([p])).logits[0]
        torch.testing.assert_close(pipe.engine.get_logits(p), want, atol=1e-4, rtol=1e-4)


def test_logits_with_image_embeddings_equal_inputs_embeds(pair):
    """Embeddings written at the image positions == ``LlamaForCausalLM(inputs_embeds=...)``."""
    pipe, ref = pair
    ids = [1, 5, 0, 0, 0, 0, 17, 300]
    emb = torch.randn(4, ref.lm.config.hidden_size, generator=torch.Generator().manual_seed(0))
    got = pipe.engine.get_logits(ids, input_embeddings=[emb], embedding_ranges=[(2, 6)])
    with torch.inference_mode():
        embeds = ref.lm.get_input_embeddings()(torch.tensor(ids)).clone()
        embeds[2:6] = emb
        want = ref.lm(inputs_embeds=embeds[None]).logits[0]
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
