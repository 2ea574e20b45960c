"""vlkit plugin for Idefics3: ``Idefics3ForConditionalGeneration`` checkpoints
(HuggingFaceM4/Idefics3-8B-Llama3, SmolVLM). The entry point is :mod:`vlkit_plugin_idefics3.hooks`."""

__version__ = "0.1.0"
