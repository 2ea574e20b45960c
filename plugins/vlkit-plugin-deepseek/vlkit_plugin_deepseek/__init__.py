"""vlkit plugin for DeepSeek-VL (see hooks.py for the families)."""

__version__ = "0.1.0"
