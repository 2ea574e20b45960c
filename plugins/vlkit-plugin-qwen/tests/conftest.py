"""Shared test setup."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))  # importlib mode: make qwen_reference importable
