"""vlkit plugin for LLaVA: LLaVA-1.5 and LLaVA-NeXT in transformers' format, and the original
``LlavaLlamaForCausalLM`` layout. The entry point is :mod:`vlkit_plugin_llava.hooks`."""

__version__ = "0.1.0"
