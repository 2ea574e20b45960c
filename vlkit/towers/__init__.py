"""Vision towers plugins share, as plain ``torch.nn`` modules with transformers' parameter names.

A family plugin builds its VisionModel from these (and its own projector), so that a tower is
written, tested and made fast once: :mod:`vlkit.towers.clip` (LLaVA, MobileVLM).
"""
