"""vlkit plugin for MobileVLM and MobileVLM V2 (``MobileLlamaForCausalLM`` checkpoints)."""

__version__ = "0.1.0"
