"""The vlkit conformance suite on this family's tiny checkpoint.

:class:`vlkit.testing.conformance.VLMConformanceSuite` supplies the tests: prompt ids and
image positions, greedy tokens for one image, two images, a batch of three and many image
sizes and formats, prompt logits, TP=2 against TP=1 (marked ``slow``) and bad input --
each compared with a reference implementation run on the same checkpoint.

The reference here is transformers' ``LlavaForConditionalGeneration``, because this
template's model *is* LLaVA-1.5-shaped and its tiny checkpoint keeps transformers' LLaVA
config keys. When your model differs, give a reference that runs it the way its authors do
(the model's transformers class, or a ``Reference``-returning callable around the original
code) -- never vlkit itself.
"""

from __future__ import annotations

from pathlib import Path

from vlkit.testing.conformance import TransformersReference, VLMConformanceSuite

from {{ cookiecutter.__package }}.hooks import FAMILY


class Test{{ cookiecutter.__prefix }}Conformance(VLMConformanceSuite):
    family = FAMILY

    def make_reference(self, model_dir: Path) -> TransformersReference:
        from transformers import LlavaForConditionalGeneration

        return TransformersReference(model_dir, LlavaForConditionalGeneration)
