"""``vlkit bench`` workloads W2-W4 on a tiny LLaVA checkpoint: what they report, not how fast.

The figures a benchmark prints rest on counters (prefix-cache hits, image-feature cache hits,
vision forwards, KV blocks in use); these tests check those counters say what the workload
claims, so that a broken cache shows up here and not as a puzzling number in a report.
"""

import json

import pytest

from vlkit.bench import workloads
from vlkit.cli import main as cli_main


def test_w2_later_turns_hit_both_caches_and_miss_without_them(llava_dir):
    res = workloads.run_w2(sessions=2, turns=3, new_tokens=4, checkpoint_dir=str(llava_dir))
    on, off = res["caches_on"]["turns"], res["caches_off"]["turns"]
    assert [t["turn"] for t in on] == [1, 2, 3]
    assert on[0]["prefix_hit_tokens"] == 0 and on[0]["image_feature_cache_hits"] == 0
    for t in on[1:]:
        # every session's history (its image included) comes back from the caches
        assert t["prefix_hit_tokens"] >= 2 * 16
        assert t["image_feature_cache_hits"] == 2
        assert t["mean_prompt_tokens"] > on[0]["mean_prompt_tokens"]
    assert all(t["prefix_hit_tokens"] == 0 and t["image_feature_cache_hits"] == 0 for t in off)
    assert res["caches_on"]["later_over_first"] > 0
    assert "turns 2+ / turn 1" in workloads.format_table(res)


def test_w3_batches_the_vision_forward(llava_dir):
    res = workloads.run_w3(num_images=5, batch_sizes=(1, 4), repeats=1, checkpoint_dir=str(llava_dir))
    assert [r["forward_calls"] for r in res["results"]] == [5, 2]
    assert res["results"][0]["vs_first"] == 1.0
    assert all(r["images_per_s"] > 0 for r in res["results"])
    assert "max_batch_size" in workloads.format_table(res)


def test_w4_kv_memory_follows_the_tokens_in_flight(llava_dir, tmp_path):
    res = workloads.run_w4(loads=(1, 3), new_tokens=4, checkpoint_dir=str(llava_dir))
    one, three = res["results"]
    assert one["requests"] == 1 and three["requests"] == 3
    assert one["output_tokens"] == 4 and three["output_tokens"] == 12
    # each request holds the blocks of its own prompt + output, not a session_len reservation
    need = -(-(three["mean_prompt_len"] + 4) // 16)
    assert one["kv_peak_used_blocks"] <= need + 1
    assert three["kv_peak_used_blocks"] > one["kv_peak_used_blocks"]
    assert three["kv_peak_used_mb"] < three["kv_session_len_reservation_mb"]
    assert "peak KV used" in workloads.format_table(res)
    pytest.importorskip("matplotlib")
    assert workloads.plot(res, tmp_path / "w4.png").stat().st_size > 0


def test_cli_rejects_an_unknown_workload(capsys, tmp_path):
    assert cli_main(["bench", "w9", "--output", str(tmp_path / "x.json")]) == 2
    assert "unknown workload 'w9'" in capsys.readouterr().out
    assert not (tmp_path / "x.json").exists()


def test_w3_from_the_command_line_writes_its_record(llava_dir, tmp_path, monkeypatch, capsys):
    real = workloads.run_w3
    monkeypatch.setattr(workloads, "run_w3", lambda: real(num_images=3, batch_sizes=(1, 3), repeats=1,
                                                          checkpoint_dir=str(llava_dir)))
    out = tmp_path / "w3.json"
    assert cli_main(["bench", "w3", "--output", str(out)]) == 0
    rec = json.loads(out.read_text())
    assert rec["workload"] == "w3" and [r["forward_calls"] for r in rec["results"]] == [3, 1]
    assert "wrote" in capsys.readouterr().out
