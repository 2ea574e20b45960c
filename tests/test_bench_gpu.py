"""``vlkit bench gpu`` on the CPU: the command, its record and its refusals (the figures that
matter come from a GPU: docs/benchmarks.md)."""

import json

import pytest
import torch

from vlkit.cli import main as cli_main


def test_refuses_without_cuda_unless_allowed(capsys, tmp_path):
    if torch.cuda.is_available():
        return
    assert cli_main(["bench", "gpu", "--output-dir", str(tmp_path)]) == 2
    assert "no CUDA device" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_unknown_workload(capsys, tmp_path):
    assert cli_main(["bench", "gpu", "--workloads", "w1,llava-13b", "--allow-cpu", "--output-dir", str(tmp_path)]) == 2
    assert "unknown workload(s) llava-13b" in capsys.readouterr().err


def test_tiny_workload_writes_its_record(capsys, tmp_path):
    argv = ["bench", "gpu", "--workloads", "tiny", "--requests", "3", "--new-tokens", "6", "--allow-cpu",
            "--output-dir", str(tmp_path)]
    assert cli_main(argv) == 0
    rec = json.loads((tmp_path / "gpu-tiny.json").read_text())
    vl, hf, rf = rec["vlkit"], rec["hf_generate_batched"], rec["roofline"]
    assert vl["output_tokens"] == hf["output_tokens"] == 3 * 6
    assert rec["speedup_vs_hf"] == vl["tok_per_s"] / hf["tok_per_s"]
    assert rec["dtype"] == "bfloat16" and rec["num_requests"] == 3 and rec["new_tokens"] == 6
    # the decode step was timed with every request's sequence decoding, and set against the roofline
    assert vl["decode"]["batch"] == rf["batch"] == 3
    assert 0 < rf["fraction"] <= 1
    assert rf["decode_step_ideal_s"] == pytest.approx(rf["bytes_per_step"] / (rf["hbm_copy_GBps"] * 1e9))
    assert rf["fraction"] == pytest.approx(rf["decode_step_ideal_s"] / rf["decode_step_achieved_s"])
    table = capsys.readouterr().out
    assert "| tiny |" in table and "speed-up" in table
