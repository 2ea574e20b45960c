"""Checkpoints as transformers writes them, in every layout it reads: the same weights under the
tensor names of each transformers version, and a composite config that ties the LM head.

The reference for "a layout vlkit must load" is transformers itself: each renamed checkpoint is
first loaded by transformers with nothing missing, then vlkit must give the same tokens.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import vlkit
from vlkit.testing import make_image

GEN = vlkit.GenerationConfig(max_new_tokens=8)
PROMPT = ("describe the picture", make_image(48, 40, seed=3))


def _renamed(src: Path, dst: Path, rename) -> Path:
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    for f in dst.glob("*.safetensors"):
        tensors = load_file(str(f))
        save_file({rename(k): v for k, v in tensors.items()}, str(f), metadata={"format": "pt"})
    index = dst / "model.safetensors.index.json"
    if index.is_file():
        data = json.loads(index.read_text())
        data["weight_map"] = {rename(k): v for k, v in data["weight_map"].items()}
        index.write_text(json.dumps(data))
    return dst


def _swap(pairs):
    def rename(name: str) -> str:
        for old, new in pairs:
            if name.startswith(old):
                return new + name[len(old):]
        return name
    return rename


# the tiny LLaVA checkpoint is saved by the installed transformers (5.25: language_model.model.*,
# language_model.lm_head.*, vision_tower.* without vision_model., multi_modal_projector.*)
LAYOUTS = {
    "hub-4.x": [("vision_tower.", "vision_tower.vision_model.")],
    "transformers-5.5": [("language_model.model.", "model.language_model.model."),
                         ("vision_tower.", "model.vision_tower.vision_model."),
                         ("multi_modal_projector.", "model.multi_modal_projector.")],
    "module-names": [("language_model.model.", "model.language_model."), ("language_model.lm_head.", "lm_head."),
                     ("vision_tower.", "model.vision_tower."),
                     ("multi_modal_projector.", "model.multi_modal_projector.")],
}


@pytest.fixture(scope="module")
def reference_tokens(llava_dir):
    with vlkit.pipeline(llava_dir, engine_config=vlkit.EngineConfig(num_blocks=64)) as pipe:
        return pipe(PROMPT, gen_config=GEN).token_ids


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_every_layout_transformers_reads_loads(layout, llava_dir, reference_tokens, tmp_path):
    from transformers import LlavaForConditionalGeneration

    path = _renamed(Path(llava_dir), tmp_path / layout, _swap(LAYOUTS[layout]))
    _, info = LlavaForConditionalGeneration.from_pretrained(str(path), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info  # a layout transformers reads
    with vlkit.pipeline(path, engine_config=vlkit.EngineConfig(num_blocks=64)) as pipe:
        assert pipe(PROMPT, gen_config=GEN).token_ids == reference_tokens


def test_composite_config_ties_the_lm_head_as_transformers_does(llava_dir, tmp_path):
    """tie_word_embeddings true at the top, false in text_config, no lm_head tensor: transformers
    ties the head to the embeddings, and so must vlkit (it used to stop: lm_head.weight missing)."""
    import torch
    from transformers import LlavaForConditionalGeneration

    path = _renamed(Path(llava_dir), tmp_path / "tied", _swap([]))
    cfg = json.loads((path / "config.json").read_text())
    cfg["tie_word_embeddings"] = True
    cfg["text_config"]["tie_word_embeddings"] = False
    (path / "config.json").write_text(json.dumps(cfg))
    from safetensors.torch import load_file, save_file

    for f in path.glob("*.safetensors"):
        tensors = {k: v for k, v in load_file(str(f)).items() if not k.endswith("lm_head.weight")}
        save_file(tensors, str(f), metadata={"format": "pt"})
    ref, info = LlavaForConditionalGeneration.from_pretrained(str(path), output_loading_info=True)
    assert not info["missing_keys"]
    assert ref.lm_head.weight.data_ptr() == ref.get_input_embeddings().weight.data_ptr()  # transformers ties

    with vlkit.pipeline(path, engine_config=vlkit.EngineConfig(num_blocks=64)) as pipe:
        inputs = pipe.prepare_inputs(PROMPT)
        ours = pipe.get_logits(inputs)[-1]
        processor_inputs = torch.tensor([inputs["input_ids"]])
        embeds = ref.get_input_embeddings()(processor_inputs)
        for emb, (s, e) in zip(inputs["input_embeddings"], inputs["input_embedding_ranges"], strict=True):
            embeds[0, s:e] = emb
    with torch.no_grad():
        theirs = ref.model.language_model(inputs_embeds=embeds).last_hidden_state[0, -1] @ ref.lm_head.weight.T
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)


HF_FAMILIES = ["llava", "llava-next", "qwen2-vl", "qwen2.5-vl", "internvl-hf", "deepseek-vl", "deepseek-vl-hybrid",
               "idefics3"]


@pytest.mark.parametrize("family", HF_FAMILIES)
def test_every_hf_family_loads_transformers_module_names(family, tmp_path):
    """The same weights under the names of transformers' own modules (what its 4.52+ state_dict
    says, a layout it reads for every class) load in vlkit with the same tokens as the file
    transformers saved."""
    import torch
    import transformers
    from safetensors.torch import save_file

    from vlkit.contract.registry import get_registry

    try:
        fam = get_registry().get_family(family)
    except KeyError:
        pytest.skip(f"{family} is not installed")
    src = fam.tiny_checkpoint(tmp_path / "saved")
    cfg = json.loads((src / "config.json").read_text())
    cls = getattr(transformers, cfg["architectures"][0])
    ref = cls.from_pretrained(str(src), dtype=torch.float32)
    seen: set[int] = set()
    state = {}
    for name, t in ref.state_dict().items():
        if t.data_ptr() in seen:  # tied: stored once, as transformers saves it
            continue
        seen.add(t.data_ptr())
        state[name] = t.contiguous().clone()
    dst = tmp_path / "module-names"
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.safetensors", "*.safetensors.index.json", "*.bin"))
    save_file(state, str(dst / "model.safetensors"), metadata={"format": "pt"})
    _, info = cls.from_pretrained(str(dst), output_loading_info=True)
    assert not info["missing_keys"], info  # a layout transformers reads
    img = make_image(56, 40, seed=5)
    prompt = [{"role": "user", "content": [{"type": "image", "image": img}, {"type": "text", "text": "describe"}]}]
    tokens = []
    for path in (src, dst):
        with vlkit.pipeline(path, engine_config=vlkit.EngineConfig(num_blocks=128, device="cpu", dtype="float32")) as p:
            tokens.append(p(prompt, gen_config=GEN).token_ids)
    assert tokens[0] == tokens[1]


@pytest.mark.parametrize("family", ["internvl-hf", "deepseek-vl"])
def test_tied_composite_checkpoints_of_internvl_and_deepseek(family, tmp_path):
    """What transformers 5 saves for these classes by default: tie_word_embeddings true at the
    top, false in text_config, no lm_head tensor. vlkit ties like transformers: its tokens equal
    those of the same weights saved untied with lm_head = the embeddings."""
    from safetensors.torch import load_file, save_file

    from vlkit.contract.registry import get_registry

    try:
        fam = get_registry().get_family(family)
    except KeyError:
        pytest.skip(f"{family} is not installed")
    src = fam.tiny_checkpoint(tmp_path / "src")
    tied, untied = tmp_path / "tied", tmp_path / "untied"
    for dst, tie in ((tied, True), (untied, False)):
        shutil.copytree(src, dst)
        cfg = json.loads((dst / "config.json").read_text())
        cfg["tie_word_embeddings"] = tie
        cfg["text_config"]["tie_word_embeddings"] = False
        (dst / "config.json").write_text(json.dumps(cfg))
        index_path = dst / "model.safetensors.index.json"
        index = json.loads(index_path.read_text()) if index_path.is_file() else None
        for f in dst.glob("*.safetensors"):
            tensors = load_file(str(f))
            head = next((n for n in tensors if n.endswith("lm_head.weight")), None)
            emb = next((n for n in tensors if n.endswith("embed_tokens.weight")), None)
            if head is not None:
                del tensors[head]
                if index is not None:
                    index["weight_map"].pop(head)
            if emb is not None and not tie:  # the head as its own tensor, equal to the embeddings
                tensors[head or "lm_head.weight"] = tensors[emb].clone()
                if index is not None:
                    index["weight_map"][head or "lm_head.weight"] = f.name
            save_file(tensors, str(f), metadata={"format": "pt"})
        if index is not None:
            index_path.write_text(json.dumps(index))
    img = make_image(56, 40, seed=6)
    prompt = [{"role": "user", "content": [{"type": "image", "image": img}, {"type": "text", "text": "describe"}]}]
    out = []
    for path in (tied, untied):
        with vlkit.pipeline(path, engine_config=vlkit.EngineConfig(num_blocks=128, device="cpu", dtype="float32")) as p:
            out.append(p(prompt, gen_config=GEN).token_ids)
    assert out[0] == out[1]
