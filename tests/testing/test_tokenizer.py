import hashlib
import json
import subprocess
import sys

import pytest
from transformers import AutoTokenizer

from vlkit.testing import make_chatml_tokenizer, make_tokenizer, save_tokenizer

SPECIAL = ["<image>", "<|im_start|>", "<|im_end|>", "<IMG_CONTEXT>"]
TEXTS = [
    "Hello world",
    "What is shown in this image?",
    "<image>\nDescribe <image><image> please",
    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
    "unicode: é ü ß 中文 日本語 🙂🚀 — “quotes”",
    "  leading and trailing spaces  ",
    "",
    "<IMG_CONTEXT>" * 5,
    "<imag e> <image <image>>",
]


def test_special_tokens_are_single_never_split_ids():
    tok = make_tokenizer(SPECIAL)
    vocab = tok.get_vocab()
    for t in SPECIAL:
        tid = tok.convert_tokens_to_ids(t)
        assert vocab[t] == tid and tid < 1000
        ids = tok(f"a{t}b {t} {t}{t}", add_special_tokens=False).input_ids
        assert ids.count(tid) == 4
        assert tok(t, add_special_tokens=False).input_ids == [tid]
        assert t in tok.all_special_tokens
    # pieces of a special token are ordinary text, never the special id
    ids = tok("<imag e> <image", add_special_tokens=False).input_ids
    assert tok.convert_tokens_to_ids("<image>") not in ids


def test_ids_below_vocab_size_and_vocab_filled():
    tok = make_tokenizer(SPECIAL, vocab_size=600)
    assert len(tok) == 600
    assert max(tok.get_vocab().values()) == 599
    for text in TEXTS:
        assert all(i < 600 for i in tok(text).input_ids)
    with pytest.raises(ValueError):
        make_tokenizer(vocab_size=100)


def test_llama_style_bos_and_ids():
    tok = make_tokenizer(["<image>"])
    assert (tok.unk_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    assert tok.convert_tokens_to_ids("<image>") == 3
    ids = tok("Hello world").input_ids
    assert ids[0] == 1 and ids.count(1) == 1 and ids[-1] != 2
    assert tok("Hello world", add_special_tokens=False).input_ids == ids[1:]
    with_eos = make_tokenizer(["<image>"], add_eos=True)("Hello world").input_ids
    assert with_eos == [*ids, 2]
    no_bos = make_tokenizer(["<image>"], add_bos=False)("Hello world").input_ids
    assert no_bos == ids[1:]


def test_any_text_round_trips_through_decode():
    tok = make_tokenizer(SPECIAL)
    for text in TEXTS:
        ids = tok(text, add_special_tokens=False).input_ids
        assert tok.decode(ids) == text
        assert tok.unk_token_id not in ids


def test_chatml_variant():
    tok = make_chatml_tokenizer(["<|vision_start|>", "<|image_pad|>"])
    assert tok.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>"]) == [0, 1, 2]
    assert tok.bos_token is None and tok.unk_token is None
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    ids = tok("<|im_start|>user\nhi<|im_end|>").input_ids
    assert ids[0] == 1 and ids[-1] == 2  # nothing added around the text
    prompt = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")


@pytest.mark.parametrize("factory", [
    lambda: make_tokenizer(SPECIAL, chat_template="{{ bos_token }}{% for m in messages %}{{ m['content'] }}{% endfor %}"),
    lambda: make_tokenizer(SPECIAL, add_eos=True, pad="<pad>"),
    lambda: make_chatml_tokenizer(["<|image_pad|>"]),
], ids=["llama", "eos-pad", "chatml"])
def test_save_and_auto_tokenizer_round_trip(tmp_path, factory):
    tok = factory()
    save_tokenizer(tok, tmp_path)
    names = {p.name for p in tmp_path.iterdir()}
    assert {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"} <= names
    cfg = json.loads((tmp_path / "tokenizer_config.json").read_text())
    if tok.chat_template:
        assert cfg["chat_template"] == tok.chat_template
        assert (tmp_path / "chat_template.jinja").read_text() == tok.chat_template
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    for text in TEXTS:
        assert loaded(text).input_ids == tok(text).input_ids, text
        assert loaded.decode(loaded(text).input_ids) == tok.decode(tok(text).input_ids)
    assert loaded.all_special_tokens == tok.all_special_tokens
    assert (loaded.bos_token, loaded.eos_token, loaded.pad_token, loaded.unk_token) == (
        tok.bos_token, tok.eos_token, tok.pad_token, tok.unk_token)
    assert loaded.chat_template == tok.chat_template
    assert loaded.model_max_length == 4096


def test_deterministic_and_cached_but_independent():
    a, b = make_tokenizer(SPECIAL), make_tokenizer(SPECIAL)
    assert a is not b
    assert a.backend_tokenizer.to_str() == b.backend_tokenizer.to_str()
    a.add_tokens(["<extra>"])  # mutating one build does not leak into the next
    assert "<extra>" not in make_tokenizer(SPECIAL).get_vocab()


def test_deterministic_across_processes():
    # the trained tokenizer.json (what make_tokenizer wraps) is byte-identical in fresh processes;
    # only the `tokenizers` trainer runs there, so this stays cheap
    code = ("import hashlib; from vlkit.testing.tokenizer import _train; "
            "print(hashlib.sha256(_train(('<unk>', '<s>', '</s>', '<image>'), 1000, '<s>', '</s>', True, False)"
            ".encode()).hexdigest())")
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True) for _ in range(2)]
    out = {p.communicate(timeout=60)[0] for p in procs}
    assert len(out) == 1 and all(p.returncode == 0 for p in procs)
    here = make_tokenizer(["<image>"]).backend_tokenizer.to_str()
    assert hashlib.sha256(here.encode()).hexdigest() + "\n" in out
