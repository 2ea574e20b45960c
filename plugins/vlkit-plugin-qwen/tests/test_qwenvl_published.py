"""The Qwen-VL-Chat vision side against tensors made with the published visual.py (tests/data/README.md)."""
from pathlib import Path

import torch
from safetensors.torch import load_file

from vlkit.config import EngineConfig
from vlkit.testing.conformance import make_test_image

DATA = Path(__file__).parent / "data" / "qwenvl_visual_reference.safetensors"


def test_vision_equals_published_visual_py(tmp_path):
    from vlkit_plugin_qwen.checkpoints import tiny_qwen_vl_chat

    import vlkit

    ref = load_file(str(DATA))
    pipe = vlkit.pipeline(tiny_qwen_vl_chat(tmp_path / "m", seed=4),
                          engine_config=EngineConfig(device="cpu", dtype="float32", num_blocks=64))
    try:
        images = {"wide": make_test_image("wide"), "large": make_test_image("large", seed=3)}
        items = pipe.vision.preprocess(list(images.values()), [{}] * len(images))
        feats = pipe.vision.forward(items)
        for (name, _), item, f in zip(images.items(), items, feats):
            torch.testing.assert_close(item.data["pixel_values"], ref[f"{name}.pixel_values"], atol=1e-6, rtol=0)
            torch.testing.assert_close(f, ref[f"{name}.features"], atol=1e-5, rtol=1e-5)
    finally:
        pipe.close()
