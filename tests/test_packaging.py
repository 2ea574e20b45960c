"""Every distribution (the core and each plugin) builds a wheel with no deprecation warning and
carries its licence (SPDX expression + LICENSE file), project URLs and a bounded vlkit range."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DISTS = [REPO, *sorted(p.parent for p in (REPO / "plugins").glob("*/pyproject.toml"))]


@pytest.mark.slow
@pytest.mark.parametrize("src", DISTS, ids=lambda p: p.name if p != REPO else "vlkit")
def test_wheel_metadata_and_no_deprecation_warning(src: Path, tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-v", "-w", str(tmp_path),
         str(src)], capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "PYTHONWARNINGS": "default"},
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    log = r.stdout + r.stderr
    assert "DeprecationWarning" not in log and "deprecated" not in log.lower(), log[-4000:]
    (wheel,) = tmp_path.glob("*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        meta = Parser().parsestr(z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode())
        lic = next((n for n in names if n.endswith(".dist-info/licenses/LICENSE")), None)
        assert lic is not None, names
        assert z.read(lic).decode().lstrip().startswith("Apache License")
    assert meta["License-Expression"] == "Apache-2.0" and meta["License"] is None
    urls = dict(u.split(", ", 1) for u in meta.get_all("Project-URL"))
    assert {"Homepage", "Source", "Issues"} <= set(urls)
    assert meta.get_all("Classifier")
    if src == REPO:  # package data the code reads at run time
        assert {"vlkit/kernels/quant_gemm.cpp", "vlkit/templates/chatml.jinja"} <= set(names), names
    if src != REPO:
        (req,) = [d for d in meta.get_all("Requires-Dist")
                  if d.split(";")[0].replace(" ", "").startswith("vlkit") and "extra ==" not in d]
        assert "<" in req and ">=" in req, req  # a compatible range, not an unbounded vlkit
