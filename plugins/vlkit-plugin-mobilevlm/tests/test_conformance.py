"""The vlkit conformance suite for MobileVLM V1 (``ldpnet``) and V2 (``ldpnetv2``).

There is no transformers class for ``MobileLlamaForCausalLM``: the reference is
:class:`vlkit_plugin_mobilevlm.testing.EagerMobileVLM` — transformers' ``CLIPVisionModel`` +
the projector + ``LlamaForCausalLM(inputs_embeds=...)``, fed the ORIGINAL code's prompt
(``conv_vicuna_v1``, ``tokenizer_image_token``) and preprocessing (pad to square with the mean
colour, then CLIP's processor).
"""

from __future__ import annotations

from pathlib import Path

from vlkit.testing.conformance import VLMConformanceSuite


class _MobileVLM(VLMConformanceSuite):
    family = "mobilevlm"

    def make_reference(self, model_dir: Path):
        from vlkit_plugin_mobilevlm.testing import EagerMobileVLM

        return EagerMobileVLM(model_dir)


class TestMobileVLMV1(_MobileVLM):
    checkpoint_options = {"version": "v1", "fmt": "bin"}


class TestMobileVLMV2(_MobileVLM):
    checkpoint_options = {"version": "v2", "fmt": "safetensors", "shards": 2}
