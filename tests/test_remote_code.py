"""No checkpoint code runs, and nothing prompts, unless the user says trust_remote_code.

Every original-layout family (the checkpoints whose released configs carry ``auto_map``) is
loaded on a pseudo-terminal, with code planted under every name its ``auto_map`` entries use:
the planted modules end the process when imported, and transformers would ask ``[y/N]`` on a
terminal before running them.
"""

from __future__ import annotations

import sys

import pytest

from vlkit.contract.registry import get_registry
from vlkit.testing import RAN_CODE_STATUS, plant_checkpoint_code, run_on_terminal

ORIGINAL_LAYOUTS = {
    "internvl": {"llm": "internlm2"},
    "qwen-vl": {},
    "llava-original": {},
    "mobilevlm": {},
    "deepseek-vl-original": {},
}

_CODE = ("import sys, vlkit; from vlkit.config import GenerationConfig as G; p = vlkit.pipeline(sys.argv[1]); "
         "r = p('hello', gen_config=G(max_new_tokens=2, min_new_tokens=2), use_tqdm=False); "
         "print('TOKENS', len(r.token_ids), r.finish_reason); p.close()")


@pytest.mark.parametrize("family", sorted(ORIGINAL_LAYOUTS))
def test_loading_on_a_terminal_never_prompts_or_runs_checkpoint_code(family, tmp_path):
    if not _has(family):
        pytest.skip(f"the plugin of {family!r} is not installed")
    d = get_registry().get_family(family).tiny_checkpoint(tmp_path / family, **ORIGINAL_LAYOUTS[family])
    planted = plant_checkpoint_code(d)
    assert planted, "nothing planted"
    rc, text = run_on_terminal([sys.executable, "-c", _CODE, str(d)], env={"HF_HUB_OFFLINE": "1"})
    assert rc != RAN_CODE_STATUS, f"checkpoint code ran ({planted}):\n{text}"
    assert "[y/N]" not in text, text
    assert rc == 0 and "TOKENS 2 length" in text, text


def test_planted_code_does_run_when_trusted(tmp_path):
    """The planted code is real: transformers imports it once trust_remote_code=True."""
    if not _has("qwen-vl"):
        pytest.skip("the qwen plugin is not installed")
    d = get_registry().get_family("qwen-vl").tiny_checkpoint(tmp_path / "q")
    plant_checkpoint_code(d)
    code = "import sys, transformers; transformers.AutoConfig.from_pretrained(sys.argv[1], trust_remote_code=True)"
    rc, text = run_on_terminal([sys.executable, "-c", code, str(d)], env={"HF_HUB_OFFLINE": "1"})
    assert rc == RAN_CODE_STATUS, text


def _has(family: str) -> bool:
    try:
        get_registry().get_family(family)
    except KeyError:
        return False
    return True
