"""Errors of loading checkpoint tensors into parameters, and the shape check every layer runs.

A leaf module: the layers raise these while copying, :mod:`vlkit.models.base` collects them
into one :class:`WeightLoadError`, and :mod:`vlkit.engine.loader` adds what the checkpoint held.
"""

from __future__ import annotations

from typing import Any


class WeightShapeError(ValueError):
    """A checkpoint tensor's shape differs from what the parameter expects."""

    def __init__(self, expected: tuple, got: tuple):
        super().__init__(f"expected shape {expected}, got {got}")
        self.expected, self.got = expected, got


class WeightLoadError(ValueError):
    """The checkpoint does not fit the model: tensors missing, of the wrong shape, or (where the
    caller asks) unexpected."""

    def __init__(self, model: str, missing: list[tuple[str, tuple]], misshaped: list[tuple[str, tuple, tuple]],
                 hint: str = "", unexpected: list[str] | tuple[str, ...] = ()):
        self.missing, self.misshaped, self.unexpected = missing, misshaped, list(unexpected)
        parts = []
        if misshaped:
            shown = "; ".join(f"{n} (expected {e}, got {g})" for n, e, g in misshaped[:5])
            more = f" and {len(misshaped) - 5} more" if len(misshaped) > 5 else ""
            parts.append(f"{len(misshaped)} tensor(s) with the wrong shape: {shown}{more}")
        if missing:
            shown = "; ".join(f"{n} (expected shape {s})" for n, s in missing[:5])
            more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
            parts.append(f"{len(missing)} tensor(s) missing: {shown}{more}")
        if self.unexpected:
            more = f" and {len(self.unexpected) - 5} more" if len(self.unexpected) > 5 else ""
            parts.append(f"{len(self.unexpected)} unexpected tensor(s): {', '.join(self.unexpected[:5])}{more}")
        super().__init__(f"checkpoint does not match {model}: " + "; ".join(parts) + (f". {hint}" if hint else ""))


def check_weight_shape(param: Any, expected: tuple[int, ...], got: Any) -> None:
    """Raise :class:`WeightShapeError` unless ``got`` (a tensor) has shape ``expected``."""
    if tuple(got.shape) != tuple(expected):
        raise WeightShapeError(tuple(expected), tuple(got.shape))
