"""Registration, the language-model spec, the prompt, and clear errors for bad configs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from vlkit.testing import call_hook


def test_hooks_import_nothing_heavy() -> None:
    code = "import sys, vlkit_plugin_mobilevlm.hooks; print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]


def test_family_registered() -> None:
    from vlkit.contract.registry import find_family

    fam = find_family({"architectures": ["MobileLlamaForCausalLM"]})
    assert fam.name == "mobilevlm" and fam.plugin == "mobilevlm"
    assert "vicuna-v1" in fam.chat_templates


def test_language_model_spec(ckpts) -> None:
    from vlkit.contract.registry import get_registry

    cfg = json.loads((ckpts["v2"] / "config.json").read_text())
    fam = get_registry().get_family("mobilevlm")
    spec = call_hook("vlkit_language_model_spec", fam, hf_config=cfg, model_path=ckpts["v2"])
    assert spec.architecture == "LlamaForCausalLM"
    assert spec.config["model_type"] == "llama" and spec.config["hidden_size"] == 64
    assert not any(k.startswith("mm_") for k in spec.config)
    assert spec.rename("model.layers.0.mlp.up_proj.weight") == "model.layers.0.mlp.up_proj.weight"
    assert spec.rename("lm_head.weight") == "lm_head.weight"
    assert spec.rename("model.mm_projector.peg.peg.0.weight") is None
    assert spec.rename("model.vision_tower.vision_tower.vision_model.pre_layrnorm.weight") is None


def _conv(images, text="What is this?"):
    return [{"role": "user", "content": [*({"type": "image", "image": im} for im in images), {"type": "text", "text": text}]}]


def test_prompt_is_the_originals(ckpts) -> None:
    from vlkit_plugin_mobilevlm.testing import EagerMobileVLM, vicuna_v1_prompt

    import vlkit
    from vlkit.config import EngineConfig
    from vlkit.testing.images import make_image

    img = make_image(30, 30)
    msgs = _conv([img]) + [
        {"role": "assistant", "content": [{"type": "text", "text": "A cat."}]},
        *_conv([], "And the colour?"),
    ]
    ref = EagerMobileVLM(ckpts["v1"])
    with vlkit.pipeline(ckpts["v1"], engine_config=EngineConfig(device="cpu", dtype="float32", num_blocks=64)) as pipe:
        got = pipe.prepare_inputs(msgs)
    text = vicuna_v1_prompt(msgs)
    assert text == (
        "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
        "detailed, and polite answers to the user's questions. USER: <image>\nWhat is this? ASSISTANT: A cat.</s>"
        "USER: And the colour? ASSISTANT:"
    )
    ids = ref.prompt_ids(msgs)  # -200 at the image
    k = ids.index(-200)
    assert got["input_ids"][:k] == ids[:k]
    assert got["input_embedding_ranges"] == [(k, k + 9)]
    assert got["input_ids"][k + 9:] == ids[k + 1:]
    assert got["prompt"].replace("<image>" * 9, "<image>") == text


def test_image_placed_by_the_user(ckpts) -> None:
    import vlkit
    from vlkit import IMAGE_TOKEN
    from vlkit.config import EngineConfig
    from vlkit.testing.images import make_image

    with vlkit.pipeline(ckpts["v1"], engine_config=EngineConfig(device="cpu", dtype="float32", num_blocks=64)) as pipe:
        got = pipe.prepare_inputs((f"Look: {IMAGE_TOKEN} what is it?", make_image(20, 20)))
    assert "USER: Look: " + "<image>" * 9 + " what is it? ASSISTANT:" in got["prompt"]


@pytest.mark.parametrize("change,match", [
    ({"mm_projector_type": "resampler"}, "mm_projector_type"),
    ({"vision_tower_type": "siglip"}, "vision_tower_type"),
    ({"mm_vision_select_feature": "cls_patch"}, "mm_vision_select_feature"),
    ({"mm_vision_tower": None}, "mm_vision_tower"),
    ({"mm_hidden_size": 48}, "mm_hidden_size"),
])
def test_bad_config_names_the_field(ckpts, tmp_path: Path, change, match) -> None:
    import shutil

    import vlkit

    d = tmp_path / "m"
    shutil.copytree(ckpts["v1"], d)
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(change)
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=match):
        vlkit.pipeline(d)


def test_missing_projector_tensor_is_named(ckpts, tmp_path: Path) -> None:
    import shutil

    import torch

    import vlkit

    d = tmp_path / "m"
    shutil.copytree(ckpts["v1"], d)
    sd = torch.load(d / "pytorch_model.bin", weights_only=True)
    del sd["model.mm_projector.model.mb_block.2.block.1.fc1.weight"]
    torch.save(sd, d / "pytorch_model.bin")
    with pytest.raises(ValueError, match=r"model\.mm_projector\.model\.mb_block\.2\.block\.1\.fc1\.weight"):
        vlkit.pipeline(d)
