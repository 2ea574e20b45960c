"""Benchmarks (shared/BENCH.md): vlkit against its peers in the same run.

* :mod:`vlkit.bench.text` — W1's language model alone against HF ``generate``;
* :mod:`vlkit.bench.vlm` — W1 (``llava-60m``) end to end against HF ``generate``;
* :mod:`vlkit.bench.cli` — ``vlkit bench WORKLOAD``; a plugin may ship
  ``vlkit_plugin_NAME.bench.run_cli(args)`` to add workload ``NAME``.
"""
