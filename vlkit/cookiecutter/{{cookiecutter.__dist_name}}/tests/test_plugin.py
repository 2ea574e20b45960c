"""Unit tests of the {{ cookiecutter._name }} plugin: registration, the VisionModel against
transformers' CLIP computed by hand, and the chat template. The end-to-end parity tests
against the reference implementation are in ``test_conformance.py``."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from vlkit.testing import call_hook

from {{ cookiecutter.__package }}.hooks import ARCHITECTURE, FAMILY

SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
    "detailed, and polite answers to the user's questions."
)


def _registry() -> Any:
    from vlkit.contract.registry import get_registry

    return get_registry()


def _rgb_images() -> list[Any]:
    from vlkit.testing import image_set

    return [im for name, im in image_set().items() if name in ("square", "wide", "tall", "tiny", "large")]


# -- registration ---------------------------------------------------------------------------


def test_family_is_registered_under_its_architecture() -> None:
    from vlkit.contract.registry import find_family

    reg = _registry()
    assert not [p for p in reg.failed_plugins() if p.name == FAMILY], reg.failed_plugins()
    family = reg.get_family(FAMILY)
    assert family.architectures == (ARCHITECTURE,)
    assert family.plugin == FAMILY
    assert list(family.chat_templates) == [FAMILY]
    assert Path(family.chat_templates[FAMILY]).is_file()
    assert find_family({"architectures": [ARCHITECTURE]}) == family


def test_hooks_module_does_not_import_torch() -> None:
    code = (
        "import sys, {{ cookiecutter.__package }}.hooks as h; h.vlkit_register_families(); "
        "sys.exit(1 if 'torch' in sys.modules or 'transformers' in sys.modules else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_language_model_spec_maps_onto_llama(checkpoint: Path, hf_config: dict[str, Any]) -> None:
    from safetensors import safe_open

    reg = _registry()
    spec = call_hook(
        "vlkit_language_model_spec", reg.get_family(FAMILY), hf_config=hf_config, model_path=checkpoint
    )
    assert spec.architecture == "LlamaForCausalLM"
    assert spec.config["hidden_size"] == hf_config["text_config"]["hidden_size"]
    with safe_open(str(checkpoint / "model.safetensors"), framework="pt") as f:
        names = list(f.keys())
    mapped = {n: spec.rename(n) for n in names}
    # whichever layout the installed transformers saved, the language model lands on the
    # backbone's names and the vision tensors are left out
    assert [mapped[n] for n in names if n.endswith("lm_head.weight")] == ["lm_head.weight"]
    assert [mapped[n] for n in names if n.endswith("embed_tokens.weight")] == ["model.embed_tokens.weight"]
    assert all(mapped[n] is None for n in names if "vision_tower" in n or "multi_modal_projector" in n)
    language = [v for n, v in mapped.items() if "vision_tower" not in n and "multi_modal_projector" not in n]
    assert language and all(v is not None and v.startswith(("model.layers.", "model.norm.", "model.embed_tokens.",
                                                           "lm_head.")) for v in language), mapped


# -- the VisionModel -----------------------------------------------------------------------


def _vision_model(checkpoint: Path, hf_config: dict[str, Any]) -> Any:
    import torch

    reg = _registry()
    vm = call_hook(
        "vlkit_vision_model", reg.get_family(FAMILY), hf_config=hf_config, model_path=checkpoint, tokenizer=None
    )
    vm.to("cpu", torch.float32)
    vm.preprocessor = vm.build_preprocessor()
    vm.model = vm.build_model()
    return vm


def test_vision_model_equals_clip_and_projector_by_hand(checkpoint: Path, hf_config: dict[str, Any]) -> None:
    """The embeddings equal transformers' CLIPVisionModel (layer -2, CLS dropped) followed by
    the projector written out as matrix products, on the checkpoint's own weights."""
    import torch
    import torch.nn.functional as F
    from transformers import AutoImageProcessor, LlavaForConditionalGeneration

    images = _rgb_images()
    vm = _vision_model(checkpoint, hf_config)
    items = vm.preprocess(images, [{} for _ in images])
    got = vm.forward(items)

    # the reference's own tower and projector weights, loaded by transformers from the checkpoint
    ref = LlavaForConditionalGeneration.from_pretrained(str(checkpoint)).eval()
    modules = dict(ref.named_modules())
    tower = next(m for n, m in modules.items() if n.split(".")[-1] == "vision_tower")
    proj = next(m for n, m in modules.items() if n.split(".")[-1] == "multi_modal_projector")
    vision = hf_config["vision_config"]
    pixels = AutoImageProcessor.from_pretrained(str(checkpoint))(images=images, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        hidden = tower(pixel_values=pixels, output_hidden_states=True).hidden_states[hf_config["vision_feature_layer"]]
        features = hidden[:, 1:]
        expected = F.linear(
            F.gelu(F.linear(features, proj.linear_1.weight, proj.linear_1.bias)),
            proj.linear_2.weight, proj.linear_2.bias,
        )

    side = vision["image_size"] // vision["patch_size"]
    assert len(got) == len(images)
    for i, (item, emb) in enumerate(zip(items, got, strict=True)):
        assert item.num_tokens == side * side
        assert tuple(emb.shape) == (side * side, hf_config["text_config"]["hidden_size"])
        torch.testing.assert_close(emb, expected[i], atol=1e-5, rtol=1e-5, msg=f"image {i}")


def test_vision_model_refuses_per_image_options(checkpoint: Path, hf_config: dict[str, Any]) -> None:
    vm = _vision_model(checkpoint, hf_config)
    with pytest.raises(ValueError, match="max_pixels"):
        vm.preprocess(_rgb_images()[:1], [{"max_pixels": 100}])


def test_missing_vision_tensor_is_named(tmp_path: Path, checkpoint: Path, hf_config: dict[str, Any]) -> None:
    from safetensors.torch import load_file, save_file

    from {{ cookiecutter.__package }}.vision import CheckpointError

    broken = tmp_path / "broken"
    shutil.copytree(checkpoint, broken)
    weights = load_file(str(broken / "model.safetensors"))
    (name,) = [n for n in weights if n.endswith("multi_modal_projector.linear_2.weight")]
    del weights[name]
    save_file(weights, str(broken / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="projector.2.weight"):
        _vision_model(broken, hf_config)


def test_sharded_checkpoint_loads(tmp_path: Path, checkpoint: Path, hf_config: dict[str, Any]) -> None:
    import torch

    from {{ cookiecutter.__package }}.hooks import tiny_checkpoint

    sharded = tiny_checkpoint(tmp_path / "sharded", shards=3)
    assert (sharded / "model.safetensors.index.json").is_file()
    images = _rgb_images()[:2]
    one, many = _vision_model(checkpoint, hf_config), _vision_model(sharded, hf_config)
    a = one.forward(one.preprocess(images, [{}, {}]))
    b = many.forward(many.preprocess(images, [{}, {}]))
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y)


# -- the chat template ---------------------------------------------------------------------


def _wrapper(checkpoint: Path, hf_config: dict[str, Any], **config: Any) -> Any:
    from transformers import AutoTokenizer
    from vlkit.config import ChatTemplateConfig

    reg = _registry()
    return call_hook(
        "vlkit_chat_template_wrapper", reg.get_family(FAMILY), hf_config=hf_config, model_path=checkpoint,
        tokenizer=AutoTokenizer.from_pretrained(str(checkpoint)), chat_template_config=ChatTemplateConfig(**config),
    )


def test_template_renders_the_expected_prompt(checkpoint: Path, hf_config: dict[str, Any]) -> None:
    from vlkit.plugin import IMAGE_TOKEN, to_conversation

    w = _wrapper(checkpoint, hf_config)
    assert w.template_name == FAMILY
    img = _rgb_images()[0]
    assert w.render(to_conversation(("What is this?", img))) == f"{SYSTEM} USER: <image>\nWhat is this? ASSISTANT:"
    placed = to_conversation((f"Compare {IMAGE_TOKEN} with {IMAGE_TOKEN}.", [img, img]))
    assert w.render(placed) == f"{SYSTEM} USER: Compare <image> with <image>. ASSISTANT:"
    turns = to_conversation([
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Bye"},
    ])
    assert w.render(turns) == "Be brief. USER: Hi ASSISTANT: Hello.</s>USER: Bye ASSISTANT:"


def test_template_equals_transformers_rendering(checkpoint: Path, hf_config: dict[str, Any]) -> None:
    """The template is also the checkpoint's chat_template: transformers renders it the same."""
    from transformers import AutoTokenizer
    from vlkit.plugin import to_conversation

    img = _rgb_images()[0]
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is this?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "A cat."}]},
        {"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "And these?"}]},
    ]
    vlkit_messages = [
        {"role": m["role"], "content": [
            {"type": "image", "image": img} if p["type"] == "image" else p for p in m["content"]
        ]} for m in messages
    ]
    tok = AutoTokenizer.from_pretrained(str(checkpoint))
    theirs = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert _wrapper(checkpoint, hf_config).render(to_conversation(vlkit_messages)) == theirs


def test_image_positions(checkpoint: Path, hf_config: dict[str, Any]) -> None:
    from vlkit.plugin import IMAGE_TOKEN, to_conversation

    w = _wrapper(checkpoint, hf_config)
    img = _rgb_images()[0]
    n = (hf_config["vision_config"]["image_size"] // hf_config["vision_config"]["patch_size"]) ** 2
    out = w.encode(to_conversation((f"{IMAGE_TOKEN} left, {IMAGE_TOKEN} right", [img, img])), [n, n])
    image_id = w.tokenizer.convert_tokens_to_ids("<image>")
    assert image_id == hf_config.get("image_token_id", hf_config.get("image_token_index"))  # as transformers spells it
    assert out.input_ids[0] == w.tokenizer.bos_token_id
    assert len(out.image_ranges) == 2
    (s1, e1), (s2, e2) = out.image_ranges
    assert e1 - s1 == n and e2 - s2 == n and e1 < s2
    positions = [i for i, t in enumerate(out.input_ids) if t == image_id]
    assert positions == list(range(s1, e1)) + list(range(s2, e2))
    between = w.tokenizer.decode(out.input_ids[e1:s2])
    assert between == " left, "
    assert out.prompt.count("<image>") == 2 * n
    json.dumps(out.image_ranges)  # plain ints


def test_stop_tokens_include_eos(checkpoint: Path, hf_config: dict[str, Any]) -> None:
    w = _wrapper(checkpoint, hf_config)
    assert w.tokenizer.eos_token_id in w.stop_token_ids()
