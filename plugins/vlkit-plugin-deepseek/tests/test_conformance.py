"""The vlkit conformance suite for DeepSeek-VL's three layouts.

* transformers' ``DeepseekVLForConditionalGeneration`` and
  ``DeepseekVLHybridForConditionalGeneration``: against those classes and their processors;
* the original ``MultiModalityCausalLM`` (1.3b and 7b): written from the same weights as a
  transformers twin, and compared with that twin fed the ORIGINAL code's prompt and
  preprocessing (:mod:`vlkit_plugin_deepseek.testing`).
"""

from __future__ import annotations

from pathlib import Path

from vlkit.testing.conformance import TransformersReference, VLMConformanceSuite


class RGBTransformersReference(TransformersReference):
    """transformers' DeepSeek-VL image processors have no RGB conversion (an RGBA, LA, CMYK, P or
    L image fails in ``pad_to_square`` or gives the wrong channel count), so the reference is
    given the RGB image vlkit decodes (:func:`vlkit.api.media.to_rgb`, alpha on white)."""

    def inputs(self, messages):
        from vlkit.api.media import to_rgb

        fixed = []
        for m in messages:
            content = m["content"]
            if not isinstance(content, str):
                content = [{**p, "image": to_rgb(p["image"])} if p.get("type") == "image" else p for p in content]
            fixed.append({**m, "content": content})
        return super().inputs(fixed)

class _PlacedImages:
    """What the suite does not cover: ``IMAGE_TOKEN`` placed in the middle of the text."""

    def test_greedy_image_token_in_middle(self, pipe, reference, eos_ids):
        from vlkit.contract.messages import IMAGE_TOKEN
        from vlkit.testing.conformance import make_test_image, upright_rgb

        a, b = make_test_image("wide", seed=12), make_test_image("exif_jpeg", seed=13)
        ref_msgs = [{"role": "user", "content": [
            {"type": "text", "text": "Compare "}, {"type": "image", "image": upright_rgb(a)},
            {"type": "text", "text": " with "}, {"type": "image", "image": upright_rgb(b)},
            {"type": "text", "text": " please."}]}]
        ref = reference(ref_msgs, self.max_new_tokens)
        prompt = (f"Compare {IMAGE_TOKEN} with {IMAGE_TOKEN} please.", [a, b])
        got = self.check_prompt(pipe, ref, prompt)
        assert "Compare <image_placeholder>" in got["prompt"]
        r = pipe(prompt, gen_config=self.gen_config(), use_tqdm=False)
        self.check_greedy(r, ref, eos_ids, "IMAGE_TOKEN in the middle")


# the hybrid runs SAM + a 576-token SigLIP per image: fewer image kinds keep the run short
_FEW_KINDS = ("wide", "tall", "tiny", "rgba", "grayscale", "exif_jpeg")


class TestDeepseekVLHF(_PlacedImages, VLMConformanceSuite):
    family = "deepseek-vl"

    def make_reference(self, model_dir: Path):
        from transformers import DeepseekVLForConditionalGeneration

        return RGBTransformersReference(model_dir, DeepseekVLForConditionalGeneration)


class TestDeepseekVLHybridHF(_PlacedImages, VLMConformanceSuite):
    family = "deepseek-vl-hybrid"
    image_kinds = _FEW_KINDS

    def make_reference(self, model_dir: Path):
        from transformers import DeepseekVLHybridForConditionalGeneration

        return RGBTransformersReference(model_dir, DeepseekVLHybridForConditionalGeneration)


class _Original(_PlacedImages, VLMConformanceSuite):
    family = "deepseek-vl-original"

    def make_reference(self, model_dir: Path):
        from vlkit_plugin_deepseek.checkpoints import hf_twin_path
        from vlkit_plugin_deepseek.testing import OriginalDeepseekReference

        return OriginalDeepseekReference(model_dir, hf_twin_path(model_dir))


class TestDeepseekOriginal13b(_Original):
    checkpoint_options = {"hybrid": False}


class TestDeepseekOriginal7b(_Original):
    checkpoint_options = {"hybrid": True}
    image_kinds = _FEW_KINDS
