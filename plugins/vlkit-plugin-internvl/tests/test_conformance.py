"""vlkit's conformance suite for both InternVL layouts.

* transformers' layout against ``InternVLForConditionalGeneration`` + InternVLProcessor's expansion;
* the original ``InternVLChatModel`` layout (Qwen2 as InternVL2-1B, InternLM2 as InternVL2-2B/8B)
  against the original ``chat()`` prompt and preprocessing run on transformers' model holding
  the same weights.
"""

from __future__ import annotations

from pathlib import Path

from internvl_reference import HFReference, OriginalReference

from vlkit.testing.conformance import VLMConformanceSuite


class TestInternVLHF(VLMConformanceSuite):
    family = "internvl-hf"
    checkpoint_options = {"text": "qwen2", "seed": 0}

    def make_reference(self, model_dir: Path):
        return HFReference(model_dir)


class TestInternVLOriginalQwen2(VLMConformanceSuite):
    family = "internvl"
    checkpoint_options = {"llm": "qwen2", "seed": 0}
    max_new_tokens = 8

    def make_reference(self, model_dir: Path):
        return OriginalReference(model_dir, model_dir.parent / f"{model_dir.name}-hf")


class TestInternVLOriginalInternLM2(VLMConformanceSuite):
    family = "internvl"
    checkpoint_options = {"llm": "internlm2", "seed": 1, "shards": 2}
    max_new_tokens = 8

    def make_reference(self, model_dir: Path):
        return OriginalReference(model_dir, model_dir.parent / f"{model_dir.name}-hf")


class TestInternVLOriginalInternLM2SentencePiece(VLMConformanceSuite):
    """InternVL2-2B/8B's released tokenizer files: tokenizer.model and auto_map to the checkpoint's
    own InternLM2Tokenizer, read by the plugin's code; the reference tokenizes as
    InternLM2TokenizerFast (see test_internlm2_tokenizer.py)."""

    family = "internvl"
    checkpoint_options = {"llm": "internlm2", "seed": 3, "tokenizer": "sentencepiece"}
    max_new_tokens = 8

    def make_reference(self, model_dir: Path):
        from test_internlm2_tokenizer import reference_fast_tokenizer

        return OriginalReference(model_dir, model_dir.parent / f"{model_dir.name}-hf",
                                 tokenizer=reference_fast_tokenizer(model_dir))


class TestInternVLOriginalPhi3(VLMConformanceSuite):
    """InternVL2-4B's layout: a Phi-3 language model (fused qkv_proj / gate_up_proj), phi3-chat."""

    family = "internvl"
    checkpoint_options = {"llm": "phi3", "seed": 2}
    max_new_tokens = 8

    def make_reference(self, model_dir: Path):
        return OriginalReference(model_dir, model_dir.parent / f"{model_dir.name}-hf")
