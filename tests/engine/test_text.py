"""String prompts, incremental detokenization and stop words (engine with a tokenizer)."""

from __future__ import annotations

import pytest

from vlkit.config import EngineConfig, GenerationConfig
from vlkit.engine import LLMEngine


@pytest.fixture(scope="module")
def engine(llama_path):
    with LLMEngine.from_pretrained(llama_path, EngineConfig(num_blocks=64, device="cpu")) as eng:
        yield eng


def test_string_prompt_is_tokenized_and_text_decoded(engine):
    prompt = "w10 w20 w30 w40"
    out = engine.generate(prompt, GenerationConfig(max_new_tokens=12, ignore_eos=True))
    ids = engine.tokenizer(prompt)["input_ids"]
    assert out.num_prompt_tokens == len(ids)
    assert out.token_ids == engine.generate(ids, GenerationConfig(max_new_tokens=12, ignore_eos=True)).token_ids
    assert out.text.strip() == engine.tokenizer.decode(out.token_ids, skip_special_tokens=True).strip()


def test_streamed_text_adds_up(engine):
    rid = engine.add_request(None, "w7 w8 w9", GenerationConfig(max_new_tokens=10, ignore_eos=True))
    pieces, last = [], None
    while engine.has_unfinished():
        for o in engine.step():
            assert o.request_id == rid
            pieces.append(o.new_text)
            last = o
    assert "".join(pieces) == last.text


def test_stop_word_truncates_text(engine):
    prompt = "w11 w12 w13"
    full = engine.generate(prompt, GenerationConfig(max_new_tokens=12, ignore_eos=True))
    words = full.text.split()
    stop = words[4]
    k = words.index(stop)
    out = engine.generate(prompt, GenerationConfig(max_new_tokens=12, ignore_eos=True, stop_words=[stop]))
    assert out.finish_reason == "stop"
    assert stop not in out.text
    assert out.text.split() == words[:k]
    assert len(out.token_ids) == k + 1  # the stop word's token is generated, its text cut
