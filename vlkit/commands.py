"""CLI commands that run models (``run``, ``chat``, ``serve``, ``bench``).

Each adder registers one sub-command; heavy imports happen when the command runs.
"""

from __future__ import annotations

from typing import Any

ADDERS: list[Any] = []
