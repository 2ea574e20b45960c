"""Calling one family's hooks in a test, the way the core calls them."""

from __future__ import annotations

from typing import Any


def call_hook(hook: str, family: Any, **kwargs: Any) -> Any:
    """Call hook ``hook`` (``"vlkit_vision_model"``...) for ``family`` (a ModelFamily or its name)
    as the core does: only the plugin that registered the family answers, then the core's
    fallback. ``kwargs`` are the hook's other arguments (``hf_config=``, ``model_path=``...).

    Calling ``plugin_manager().hook.NAME(...)`` instead would ask every installed plugin.
    """
    from vlkit.contract.registry import get_registry

    reg = get_registry()
    fam = reg.get_family(family) if isinstance(family, str) else family
    return reg.owner_hook(hook, fam)(family=fam, **kwargs)
