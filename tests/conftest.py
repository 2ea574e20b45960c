import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    # Triton kernels run on CPU tensors only in its interpreter, which must be chosen before
    # triton is first imported (vlkit.kernels.paged_decode); subprocesses inherit it
    os.environ.setdefault("TRITON_INTERPRET", "1")

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures"
sys.path.insert(0, os.path.dirname(__file__))  # pytest's importlib mode: make media_server importable


@pytest.fixture()
def media_server():
    """A local HTTP server with an image, a drip, a hang, redirects and a 404 (tests/media_server.py)."""
    from media_server import MediaServer

    server = MediaServer()
    yield server
    server.close()


def pip_install_target(target: Path, *packages: str) -> None:
    """Install packages for real (wheel built, dist-info written) into ``target``."""
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--disable-pip-version-check", "--target", str(target), *packages],
        check=True,
    )


@pytest.fixture(scope="session")
def core_only_site(tmp_path_factory) -> Path:
    """A site directory holding only the vlkit core (installed from this checkout) and pluggy."""
    import shutil

    import pluggy

    site = tmp_path_factory.mktemp("core_only_site")
    pip_install_target(site, str(ROOT))
    shutil.copytree(Path(pluggy.__file__).parent, site / "pluggy")
    return site


def _run_isolated(site: Path, *args: str, extra_paths=(), env=None) -> subprocess.CompletedProcess:
    """Run ``python -S`` (no site-packages at all) with only ``site`` (+ extras) importable."""
    e = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VLKIT_"))}
    e["PYTHONPATH"] = os.pathsep.join([str(p) for p in extra_paths] + [str(site)])
    e.update(env or {})
    return subprocess.run([sys.executable, "-S", *args], capture_output=True, text=True, env=e, timeout=120, cwd="/")


@pytest.fixture(scope="session")
def run_isolated():
    """``run_isolated(site, *python_args, extra_paths=(), env=None)``: python -S with only ``site``."""
    return _run_isolated


@pytest.fixture(scope="session")
def pip_target():
    """``pip_target(target_dir, *packages)``: a real ``pip install --target``."""
    return pip_install_target


@pytest.fixture(scope="session")
def llava_dir(tmp_path_factory) -> Path:
    """A tiny random-weight LLaVA-1.5 checkpoint (the LLaVA plugin's factory), written once; read only."""
    from vlkit.contract.registry import get_registry

    try:
        fam = get_registry().get_family("llava")
    except KeyError:
        pytest.skip("vlkit-plugin-llava is not installed")
    return fam.tiny_checkpoint(tmp_path_factory.mktemp("llava") / "tiny-llava")
