"""The small files of released checkpoints (tests/fixtures/real, sources in its README): vlkit
resolves each one's family, finds the chat template the repository ships, reads the EOS ids
``generate`` would stop on, and knows where it needs its own tokenizer code.

These are the hub's files, not vlkit's factories: a config key spelled as the release spells it
(``image_token_index``, ``visual``, ``llm_config``, ``mm_vision_tower``...) is read here.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vlkit.contract.chat import checkpoint_template
from vlkit.contract.registry import get_registry
from vlkit.engine.stopping import checkpoint_eos_ids

REAL = Path(__file__).parent / "fixtures" / "real"

# model id -> (family, EOS ids generate stops on, whether the repository ships a chat template)
EXPECTED = {
    "llava-hf/llava-1.5-7b-hf": ("llava", {2}, True),
    "liuhaotian/llava-v1.5-7b": ("llava-original", {2}, False),
    "Qwen/Qwen-VL-Chat": ("qwen-vl", {151643}, False),
    "Qwen/Qwen2-VL-2B-Instruct": ("qwen2-vl", {151643, 151645}, True),
    "Qwen/Qwen2.5-VL-3B-Instruct": ("qwen2.5-vl", {151643, 151645}, True),
    "OpenGVLab/InternVL2-2B": ("internvl", {2, 92542, 92543}, True),  # text-only ChatML; vlkit uses its `template`
}


def _dir(model_id: str) -> Path:
    return REAL / model_id.replace("/", "__")


def test_every_fixture_is_listed_with_its_source():
    readme = (REAL / "README.md").read_text()
    dirs = sorted(p.name for p in REAL.iterdir() if p.is_dir())
    assert dirs == sorted(m.replace("/", "__") for m in EXPECTED)
    for d in dirs:
        for f in (REAL / d).iterdir():
            assert f.name in readme, f"{d}/{f.name} has no source line in the README"
            if f.suffix == ".json":
                json.loads(f.read_text())


@pytest.mark.parametrize("model_id", sorted(EXPECTED))
def test_family_template_and_eos(model_id):
    family, eos, has_template = EXPECTED[model_id]
    d = _dir(model_id)
    cfg = json.loads((d / "config.json").read_text())
    try:
        got = get_registry().family_for_config(cfg)
    except Exception as exc:  # noqa: BLE001 - a plugin not installed
        pytest.skip(f"{model_id}: {exc}")
    assert got.name == family
    assert (checkpoint_template(d) is not None) == has_template
    assert checkpoint_eos_ids(d, cfg.get("llm_config") or cfg, None) | checkpoint_eos_ids(d, cfg, None) >= eos


def test_internvl2_2b_takes_the_plugins_internlm2_tokenizer():
    pytest.importorskip("vlkit_plugin_internvl")
    from vlkit_plugin_internvl.internlm2_tokenizer import is_internlm2_tokenizer

    d = _dir("OpenGVLab/InternVL2-2B")
    assert is_internlm2_tokenizer(d)
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    added = {v["content"]: int(k) for k, v in cfg["added_tokens_decoder"].items()}
    assert added["<IMG_CONTEXT>"] == 92546 and added["<|im_end|>"] == 92542


def test_qwen2_vl_image_and_video_tokens():
    for model_id in ("Qwen/Qwen2-VL-2B-Instruct", "Qwen/Qwen2.5-VL-3B-Instruct"):
        cfg = json.loads((_dir(model_id) / "config.json").read_text())
        assert (cfg["image_token_id"], cfg["video_token_id"]) == (151655, 151656)
        pre = json.loads((_dir(model_id) / "preprocessor_config.json").read_text())
        assert pre["patch_size"] == 14 and pre["merge_size"] == 2 and pre["temporal_patch_size"] == 2
