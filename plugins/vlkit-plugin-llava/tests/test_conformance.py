"""The vlkit conformance suite for the three LLaVA layouts.

* llava-hf 1.5 and NeXT: against transformers' own classes and processors;
* the original layout (1.5, 1.6 and 1.6-mistral): written from the same weights as a transformers
  twin, and compared with that twin fed the ORIGINAL code's prompt (llava_v1, or mistral_instruct)
  and preprocessing
  (:mod:`vlkit_plugin_llava.testing`).
"""

from __future__ import annotations

from pathlib import Path

from vlkit.testing.conformance import TransformersReference, VLMConformanceSuite


class TestLlavaHF(VLMConformanceSuite):
    family = "llava"

    def make_reference(self, model_dir: Path):
        from transformers import LlavaForConditionalGeneration

        return TransformersReference(model_dir, LlavaForConditionalGeneration)


class TestLlavaNextHF(VLMConformanceSuite):
    family = "llava-next"

    def make_reference(self, model_dir: Path):
        from transformers import LlavaNextForConditionalGeneration

        return TransformersReference(model_dir, LlavaNextForConditionalGeneration)


class _Original(VLMConformanceSuite):
    family = "llava-original"

    def make_reference(self, model_dir: Path):
        from vlkit_plugin_llava.checkpoints import hf_twin_path
        from vlkit_plugin_llava.testing import OriginalLlavaReference

        return OriginalLlavaReference(model_dir, hf_twin_path(model_dir))


class TestLlavaOriginal15(_Original):
    checkpoint_options = {"version": "1.5"}


class TestLlavaOriginal16(_Original):
    checkpoint_options = {"version": "1.6", "shards": 2}


class TestLlavaOriginal16Mistral(_Original):
    """liuhaotian/llava-v1.6-mistral-7b's layout: LlavaMistralForCausalLM, mistral_instruct prompts."""

    checkpoint_options = {"version": "1.6", "llm": "mistral"}
