"""``vlkit scaffold NAME``: a new model-family plugin package from the packaged template.

The template is a cookiecutter template shipped inside the ``vlkit`` wheel
(``vlkit/cookiecutter/``). :func:`scaffold` checks the name and the target directory first,
so a bad name or an occupied directory fails before anything is written, then runs
cookiecutter. The result is ``OUTPUT_DIR/vlkit-plugin-NAME/``: a package that installs,
registers family ``NAME`` through the ``vlkit`` entry-point group, and passes its own tests
(the vlkit conformance suite on a tiny checkpoint it writes itself).

This module imports no torch; cookiecutter is imported when :func:`scaffold` runs.
"""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path
from typing import Any

__all__ = ["ScaffoldError", "scaffold", "template_dir", "validate_name"]

_NAME = re.compile(r"^[a-z][a-z0-9_-]*$")
_MAX_NAME = 50


class ScaffoldError(Exception):
    """A user error: a bad family name, an occupied target directory, a template failure."""


def validate_name(name: str) -> str:
    """Check a family name; return its Python form (``-`` replaced by ``_``).

    A name is lowercase ASCII letters, digits, ``_`` and ``-``, starts with a letter, and has
    no trailing or doubled separator; its Python form becomes the package name
    ``vlkit_plugin_NAME``.

    :raises ScaffoldError: naming what is wrong.
    """
    if not isinstance(name, str) or not name:
        raise ScaffoldError("the family name is empty; give one such as 'mymodel' (lowercase letters, digits, '-', '_')")
    if len(name) > _MAX_NAME:
        raise ScaffoldError(f"the family name {name!r} is longer than {_MAX_NAME} characters")
    if not _NAME.match(name):
        bad = sorted({c for c in name if not (c.isascii() and (c.islower() or c.isdigit() or c in "-_"))})
        why = (
            f"it contains {', '.join(repr(c) for c in bad)}" if bad
            else "it must start with a lowercase letter"
        )
        raise ScaffoldError(
            f"invalid family name {name!r}: {why}. A family name uses lowercase ASCII letters, digits, "
            "'-' and '_', starts with a letter, and becomes the Python package vlkit_plugin_<name> "
            "('-' turned into '_'), e.g. 'mymodel' or 'my-vlm2'."
        )
    if name.endswith(("-", "_")) or "--" in name or "__" in name:
        raise ScaffoldError(
            f"invalid family name {name!r}: no trailing or doubled '-'/'_' (the distribution would be "
            f"'vlkit-plugin-{name}')"
        )
    return name.replace("-", "_")


def template_dir() -> Any:
    """The cookiecutter template packaged with the installed ``vlkit`` (a Traversable)."""
    return resources.files("vlkit") / "cookiecutter"


def _occupied(path: Path) -> bool:
    return path.exists() and (not path.is_dir() or any(path.iterdir()))


def scaffold(name: str, output_dir: str | Path = ".", no_input: bool = False) -> Path:
    """Create the plugin package ``OUTPUT_DIR/vlkit-plugin-NAME`` and return its path.

    :param name: the family name (see :func:`validate_name`).
    :param output_dir: where the package directory is created (made if missing).
    :param no_input: take every template default instead of prompting (author, description,
        HF architecture name, ...).
    :raises ScaffoldError: for a bad name, an existing non-empty target directory, a missing
        template, or when cookiecutter fails; nothing is left behind in those cases.
    """
    validate_name(name)
    _not_installed(name)
    out = Path(output_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise ScaffoldError(f"output directory {str(out)!r} is a file")
    target = out / f"vlkit-plugin-{name}"
    if _occupied(target):
        raise ScaffoldError(
            f"{target} already exists and is not empty; remove it or choose another --output-dir"
        )

    with resources.as_file(template_dir()) as tpl:
        tpl = Path(tpl)
        if not (tpl / "cookiecutter.json").is_file():
            raise ScaffoldError(
                f"the plugin template is missing from the installed vlkit (looked in {tpl}); reinstall vlkit"
            )
        return _run_cookiecutter(tpl, name, out, target, no_input)


def _run_cookiecutter(tpl: Path, name: str, out: Path, target: Path, no_input: bool) -> Path:
    import logging

    from cookiecutter.exceptions import CookiecutterException, FailedHookException
    from cookiecutter.main import cookiecutter

    made_out = not out.exists()
    empty_target = target.is_dir()  # an existing empty directory is reused
    log = logging.getLogger("cookiecutter")
    level = log.level
    log.setLevel(logging.CRITICAL)  # its tracebacks would bury the template's own message
    try:
        result = cookiecutter(
            str(tpl),
            no_input=no_input,
            extra_context={"_name": name},
            output_dir=str(out),
            overwrite_if_exists=empty_target,
            accept_hooks=True,
        )
    except FailedHookException as exc:  # hooks/pre_gen_project.py printed why
        _cleanup(target, out, made_out, empty_target)
        raise ScaffoldError(f"the template refused an answer (see the message above); {target} was not created") from exc
    except (CookiecutterException, OSError) as exc:
        _cleanup(target, out, made_out, empty_target)
        raise ScaffoldError(f"could not create {target}: {type(exc).__name__}: {exc}") from exc
    except EOFError as exc:  # prompts with stdin closed
        _cleanup(target, out, made_out, empty_target)
        raise ScaffoldError("input ended before every question was answered; use --no-input for the defaults") from exc
    except BaseException:  # Ctrl-C at a prompt: leave nothing half-written
        _cleanup(target, out, made_out, empty_target)
        raise
    finally:
        log.setLevel(level)
    path = Path(result)
    if path.resolve() != target.resolve():  # the template names its directory after the family
        raise ScaffoldError(f"the template created {path}, expected {target}")
    _drop_bytecode(target)
    return target


def _drop_bytecode(target: Path) -> None:
    """Remove ``__pycache__`` folders copied from the installed template (pip byte-compiles the
    template's ``.py`` files when it installs vlkit)."""
    import shutil

    for cache in sorted(target.rglob("__pycache__"), reverse=True):
        shutil.rmtree(cache, ignore_errors=True)
    for pyc in target.rglob("*.py[co]"):
        pyc.unlink(missing_ok=True)


def _not_installed(name: str) -> None:
    """Refuse a name an installed family or plugin already has: two families of one name would
    shadow each other in ``vlkit list-models`` and ``get_family``."""
    from vlkit.contract.registry import get_registry

    reg = get_registry()
    taken = {f.name: f.plugin for f in reg.families()}
    if name in taken:
        raise ScaffoldError(f"a family named {name!r} is already installed (plugin {taken[name]!r}); choose another name")
    if name.replace("-", "_") in {p.name.replace("-", "_") for p in reg.plugins}:
        raise ScaffoldError(f"a plugin named {name!r} is already installed; choose another name")


def _cleanup(target: Path, out: Path, made_out: bool, keep_target: bool) -> None:
    import shutil

    if target.exists() and not keep_target:
        shutil.rmtree(target, ignore_errors=True)
    elif keep_target and target.is_dir():
        for child in target.iterdir():
            shutil.rmtree(child, ignore_errors=True) if child.is_dir() else child.unlink(missing_ok=True)
    if made_out and out.is_dir() and not any(out.iterdir()):
        out.rmdir()
