"""vlkit's conformance suite for Idefics3 against transformers' own
``Idefics3ForConditionalGeneration`` + ``Idefics3Processor`` on the same tiny random weights:
prompt ids and image positions, greedy tokens (one image, two, batched, every image kind),
prompt logits, TP=2, and bad input."""

from __future__ import annotations

from pathlib import Path

from vlkit.testing.conformance import TransformersReference, VLMConformanceSuite


class TestIdefics3(VLMConformanceSuite):
    """Image splitting on (Idefics3-8B's default): up to 3x3 tiles + the global image."""

    family = "idefics3"
    checkpoint_options = {"seed": 0}

    def make_reference(self, model_dir: Path):
        from transformers import Idefics3ForConditionalGeneration

        return TransformersReference(model_dir, Idefics3ForConditionalGeneration)


class TestIdefics3NoSplitTied(VLMConformanceSuite):
    """No image splitting (one tile per image: the processor's short prompt form), lm_head tied
    to the embeddings (SmolVLM's small checkpoints), weights in three shards."""

    family = "idefics3"
    checkpoint_options = {"seed": 1, "do_image_splitting": False, "tie_word_embeddings": True,
                          "max_shard_size": "150KB"}
    max_new_tokens = 8
    skip_tests = {"test_tp2_equals_tp1": "tensor parallelism is covered by TestIdefics3"}

    def make_reference(self, model_dir: Path):
        from transformers import Idefics3ForConditionalGeneration

        return TransformersReference(model_dir, Idefics3ForConditionalGeneration)
