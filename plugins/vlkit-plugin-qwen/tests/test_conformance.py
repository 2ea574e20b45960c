"""vlkit's conformance suite for Qwen2-VL and Qwen2.5-VL against transformers' classes.

The reference is transformers' ``Qwen2VLForConditionalGeneration`` /
``Qwen2_5_VLForConditionalGeneration`` fed the prompt ``Qwen2VLProcessor`` builds (see
``qwen_reference``): prompt ids, image positions, greedy tokens (M-RoPE positions included)
and prompt logits must agree.
"""

from __future__ import annotations

from pathlib import Path

from qwen_reference import QwenReference

from vlkit.testing.conformance import VLMConformanceSuite


class TestQwen2VL(VLMConformanceSuite):
    family = "qwen2-vl"
    checkpoint_options = {"seed": 0}
    max_new_tokens = 8

    def make_reference(self, model_dir: Path):
        from transformers import Qwen2VLForConditionalGeneration

        return QwenReference(model_dir, Qwen2VLForConditionalGeneration)


class TestQwen2_5VL(VLMConformanceSuite):
    family = "qwen2.5-vl"
    checkpoint_options = {"seed": 1}
    max_new_tokens = 8

    def make_reference(self, model_dir: Path):
        from transformers import Qwen2_5_VLForConditionalGeneration

        return QwenReference(model_dir, Qwen2_5_VLForConditionalGeneration)


class TestQwenVLChat(VLMConformanceSuite):
    """Qwen-VL-Chat against an independent derivation of the original (see ``qwenvl_reference``)."""

    family = "qwen-vl"
    checkpoint_options = {"seed": 2}
    max_new_tokens = 8

    def make_reference(self, model_dir: Path):
        from qwenvl_reference import QwenVLReference

        return QwenVLReference(model_dir)
