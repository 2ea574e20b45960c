"""vlkit plugin for the Qwen vision-language models: Qwen2-VL and Qwen2.5-VL."""

__version__ = "0.1.0"
