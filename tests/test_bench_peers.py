"""The benchmark's OpenVINO peer plumbing (OpenVINO itself is not installed in CI: its runs are in
docs/benchmarks.md) and the roofline's byte counts, against what the engine really holds."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from vlkit.bench import openvino as ovp
from vlkit.bench.cli import main as bench_main
from vlkit.bench.w5 import kv_bytes


def test_hf4_copy_renames_the_tower_and_writes_the_preprocessor_config(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    t = {"vision_tower.embeddings.patch_embedding.weight": torch.randn(4, 3, 2, 2),
         "vision_tower.vision_model.post_layernorm.weight": torch.randn(4),
         "model.vision_tower.encoder.layers.0.mlp.fc1.weight": torch.randn(2, 2),
         "model.language_model.embed_tokens.weight": torch.randn(8, 4)}
    save_file(t, str(src / "model.safetensors"))
    (src / "config.json").write_text("{}")
    (src / "processor_config.json").write_text(json.dumps({"image_processor": {"crop_size": {"height": 224}},
                                                           "processor_class": "LlavaProcessor"}))
    out = ovp.hf4_copy(src, tmp_path / "out")
    got = load_file(str(out / "model.safetensors"))
    assert sorted(got) == ["model.language_model.embed_tokens.weight",
                           "model.vision_tower.vision_model.encoder.layers.0.mlp.fc1.weight",
                           "vision_tower.vision_model.embeddings.patch_embedding.weight",
                           "vision_tower.vision_model.post_layernorm.weight"]
    assert torch.equal(got["vision_tower.vision_model.embeddings.patch_embedding.weight"],
                       t["vision_tower.embeddings.patch_embedding.weight"])
    pre = json.loads((out / "preprocessor_config.json").read_text())
    assert pre["crop_size"] == {"height": 224} and pre["processor_class"] == "LlavaProcessor"
    assert (out / "config.json").is_file()
    # an export directory gets the same file
    exp = tmp_path / "ov-int4"
    exp.mkdir()
    ovp.write_preprocessor_config(out, exp)
    assert json.loads((exp / "preprocessor_config.json").read_text()) == pre


def test_openvino_peer_needs_its_python(monkeypatch, tmp_path, capsys):
    monkeypatch.delenv("VLKIT_OPENVINO_PYTHON", raising=False)
    with pytest.raises(ovp.OpenVINOUnavailable, match="--openvino-python"):
        ovp.openvino_python(None)
    with pytest.raises(ovp.OpenVINOUnavailable, match="does not exist"):
        ovp.openvino_python(str(tmp_path / "nope" / "python"))
    with pytest.raises(ovp.OpenVINOUnavailable, match="no OpenVINO export for precision 'int4-asym'"):
        ovp.export("python", tmp_path, tmp_path, "int4-asym")
    assert bench_main(["w1", "--peers", "hf,tensorrt", "--output", str(tmp_path / "x.json")]) == 2
    assert "--peers takes hf and/or openvino" in capsys.readouterr().err


def test_requests_for_the_runner(tmp_path):
    path = ovp.write_requests([("What is it?", b"\x89PNG fake"), ("And this?", b"\x89PNG two")], tmp_path / "r")
    items = json.loads(path.read_text())
    assert [i["question"] for i in items] == ["What is it?", "And this?"]
    assert open(items[1]["image"], "rb").read() == b"\x89PNG two"


def test_bench_precision_list_only_for_w5(capsys, tmp_path):
    assert bench_main(["w1", "--precision", "fp32,bf16", "--output", str(tmp_path / "x.json")]) == 2
    assert "one of" in capsys.readouterr().err
    assert bench_main(["w5", "--precision", "fp32,int3", "--output", str(tmp_path / "x.json")]) == 2


def test_kv_bytes():
    lm = {"hidden_size": 2048, "num_attention_heads": 32, "num_key_value_heads": 4, "num_hidden_layers": 22}
    # K and V, 22 layers, 4 heads x 64, bf16: 22.5 KB a token
    assert kv_bytes(lm, 1, 1, "bf16") == 2 * 22 * 4 * 64 * 2
    assert kv_bytes(lm, 8, 100, "fp32") == 2 * kv_bytes(lm, 8, 100, "bf16")
