"""InternLM2's tokenizer (tokenizer.model + auto_map to InternLM2Tokenizer) read by the plugin's code.

The reference is ``InternLM2TokenizerFast`` as its converter builds it, on the ``tokenizers``
library (a BPE of its own, not sentencepiece's): the sentencepiece pieces and scores as the BPE
vocabulary and merges (transformers' ``generate_merges``), byte fallback, the normalizer
``Prepend("▁")`` (when the model adds a dummy prefix) + ``Replace(" ", "▁")``, no
pre-tokenizer, the added tokens of ``tokenizer_config.json`` as special tokens, ``<s> $A`` as
post-processor and the decoder ``Replace("▁", " ")``, ``ByteFallback``, ``Fuse``,
``Strip(left=1)``.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

pytest.importorskip("sentencepiece")

TEXTS = [
    "Hello world", " leading space", "double  space   x", "\n\nnewlines\n", "ü ß ç", "tab\tend",
    "<|im_start|>user\nWhat is in the image?<|im_end|>\n<|im_start|>assistant\n",
    "数字 12345 and emoji 🙂", "<img><IMG_CONTEXT><IMG_CONTEXT></img>\nDescribe", "<s>text after bos", "",
]


def reference_fast(d: Path, add_dummy_prefix: bool):
    import sentencepiece as spm
    from tokenizers import AddedToken, Tokenizer, decoders, normalizers, processors
    from tokenizers.models import BPE
    from transformers.convert_slow_tokenizer import generate_merges

    sp = spm.SentencePieceProcessor(model_file=str(d / "tokenizer.model"))
    vocab = {sp.id_to_piece(i): i for i in range(sp.get_piece_size())}
    scores = {sp.id_to_piece(i): sp.get_score(i) for i in range(sp.get_piece_size())}
    tk = Tokenizer(BPE(vocab, generate_merges(vocab, scores), unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    norms = [normalizers.Prepend("▁")] if add_dummy_prefix else []
    tk.normalizer = normalizers.Sequence([*norms, normalizers.Replace(" ", "▁")])
    tk.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                    decoders.Strip(" ", 1, 0)])
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    for i, spec in sorted((int(i), s) for i, s in cfg["added_tokens_decoder"].items()):
        if i >= len(vocab):
            assert tk.get_vocab_size() == i  # InternVL's tokens follow the sentencepiece vocabulary
        tk.add_special_tokens([AddedToken(spec["content"], special=spec["special"], normalized=False)])
    tk.post_processor = processors.TemplateProcessing(single="<s>:0 $A:0", special_tokens=[("<s>", sp.bos_id())])
    return tk


@pytest.mark.parametrize("add_dummy_prefix", [False, True])
def test_encode_decode_equal_internlm2_fast(tmp_path, add_dummy_prefix):
    from vlkit_plugin_internvl.checkpoints import write_internlm2_tokenizer
    from vlkit_plugin_internvl.internlm2_tokenizer import InternLM2Tokenizer

    ids = write_internlm2_tokenizer(tmp_path, add_dummy_prefix=add_dummy_prefix)
    ours, ref = InternLM2Tokenizer(tmp_path), reference_fast(tmp_path, add_dummy_prefix)
    for text in TEXTS:
        got, want = ours.encode(text), ref.encode(text).ids
        assert got == want, text
        assert ours(text).input_ids == want and ours(text)["input_ids"] == want
        assert ours.encode(text, add_special_tokens=False) == ref.encode(text, add_special_tokens=False).ids
        assert ours.decode(got) == ref.decode(want, skip_special_tokens=False), text
        assert ours.decode(got, skip_special_tokens=True) == ref.decode(want, skip_special_tokens=True), text
    assert ours.bos_token_id == 1 and ours.eos_token_id == 2 and ours.pad_token_id == 2
    assert ours.convert_tokens_to_ids(["<IMG_CONTEXT>", "<|im_end|>"]) == [ids["<IMG_CONTEXT>"], ids["<|im_end|>"]]
    assert ours.convert_ids_to_tokens(ids["<img>"]) == "<img>"
    assert len(ours) == max(ids.values()) + 1 and ours.get_vocab()["</img>"] == ids["</img>"]
    assert ours.convert_tokens_to_ids("no-such-piece") == ours.unk_token_id


def test_lstrip_rstrip_of_added_tokens(tmp_path):
    from vlkit_plugin_internvl.checkpoints import write_internlm2_tokenizer
    from vlkit_plugin_internvl.internlm2_tokenizer import InternLM2Tokenizer

    write_internlm2_tokenizer(tmp_path)
    cfg_path = tmp_path / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    for spec in cfg["added_tokens_decoder"].values():
        if spec["content"] == "<img>":
            spec.update(lstrip=True, rstrip=True)
    cfg_path.write_text(json.dumps(cfg))
    tok = InternLM2Tokenizer(tmp_path)
    assert tok.encode("a  <img>  b") == tok.encode("a<img>b")
    assert tok.encode("a  <IMG_CONTEXT>  b") != tok.encode("a<IMG_CONTEXT>b")


def test_missing_tokenizer_model_is_one_clear_error(tmp_path):
    from vlkit_plugin_internvl.checkpoints import write_internlm2_tokenizer
    from vlkit_plugin_internvl.internlm2_tokenizer import InternLM2Tokenizer, is_internlm2_tokenizer

    write_internlm2_tokenizer(tmp_path)
    assert is_internlm2_tokenizer(tmp_path)
    (tmp_path / "tokenizer.model").unlink()
    with pytest.raises(FileNotFoundError, match="InternLM2Tokenizer but has no tokenizer.model"):
        InternLM2Tokenizer(tmp_path)


@pytest.fixture(scope="module")
def sp_ckpt(tmp_path_factory):
    """InternVL2-2B's files: InternLM2 language model, tokenizer.model, auto_map everywhere, and
    checkpoint code that would end the process if it ever ran."""
    from vlkit_plugin_internvl.checkpoints import tiny_internvl_original

    from vlkit.testing import plant_checkpoint_code

    d = tiny_internvl_original(tmp_path_factory.mktemp("sp") / "internvl2-2b", llm="internlm2", seed=3,
                               tokenizer="sentencepiece")
    assert "tokenization_internlm2.py" in plant_checkpoint_code(d)
    return d


def reference_fast_tokenizer(d: Path):
    """:func:`reference_fast` as a transformers tokenizer (what OriginalReference calls)."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=reference_fast(d, add_dummy_prefix=False),
                                   bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="</s>")


def test_loading_on_a_terminal_never_prompts_or_runs_checkpoint_code(sp_ckpt):
    """On a pseudo-terminal (where transformers would ask ``[y/N]``) vlkit loads and answers
    without reading it, and the checkpoint's .py files (which end the process) never run."""
    from vlkit.testing import RAN_CODE_STATUS, run_on_terminal

    code = ("import vlkit, sys; p = vlkit.pipeline(sys.argv[1]); "
            "from vlkit.config import GenerationConfig as G; "
            "r = p('hello', gen_config=G(max_new_tokens=2, min_new_tokens=2), use_tqdm=False); "
            "print('TOKENS', len(r.token_ids)); p.close()")
    rc, text = run_on_terminal([sys.executable, "-c", code, str(sp_ckpt)], env={"HF_HUB_OFFLINE": "1"})
    assert rc != RAN_CODE_STATUS, text
    assert rc == 0 and "TOKENS 2" in text and "[y/N]" not in text, text


def test_the_checkpoint_loads_without_its_py_files_too(sp_ckpt, tmp_path):
    """The released repository's .py files are not needed (a download with allow_patterns skips them)."""
    import vlkit

    d = tmp_path / "nopy"
    shutil.copytree(sp_ckpt, d, ignore=shutil.ignore_patterns("*.py"))
    from vlkit.config import GenerationConfig

    with vlkit.pipeline(str(d)) as pipe:
        assert type(pipe.tokenizer).__name__ == "InternLM2Tokenizer"
        r = pipe("hi", gen_config=GenerationConfig(max_new_tokens=3, min_new_tokens=3), use_tqdm=False)
        assert len(r.token_ids) == 3
