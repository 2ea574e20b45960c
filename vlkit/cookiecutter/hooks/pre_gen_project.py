"""Refuse answers that would produce a broken package (runs before any file is written)."""

import re
import sys

ARCHITECTURE = {{ cookiecutter.architecture | jsonify }}
VERSION = {{ cookiecutter.version | jsonify }}

problems = []
if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", ARCHITECTURE):
    problems.append(
        f"architecture {ARCHITECTURE!r} is not a valid architecture name (letters, digits and '_', "
        "as config.json 'architectures' holds them, e.g. 'MyModelForConditionalGeneration')"
    )
if not re.fullmatch(r"\d+(\.\d+)*([._-]?(a|b|rc|dev|post)\d*)*", VERSION):
    problems.append(f"version {VERSION!r} is not a PEP 440 version such as '0.1.0'")
if problems:
    for p in problems:
        print(f"error: {p}", file=sys.stderr)
    sys.exit(1)
