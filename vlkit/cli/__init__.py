"""The ``vlkit`` command: argument parsing (:mod:`vlkit.cli.main`), the commands that run a model
(:mod:`vlkit.cli.commands`), ``vlkit scaffold`` (:mod:`vlkit.cli.scaffold`) and ``vlkit demo``
(:mod:`vlkit.cli.demo`)."""

from vlkit.cli.main import main

__all__ = ["main"]
