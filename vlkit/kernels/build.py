"""Compile and load vlkit's C++ CPU kernels at run time, with plain ``g++`` (no ninja).

The sources ship in the wheel (``vlkit/kernels/*.cpp``). The first call compiles one into a
shared library under ``$VLKIT_KERNEL_CACHE`` (default ``~/.cache/vlkit/kernels``), named by a hash
of the source, the compiler flags and the torch version, and loads it with
``torch.ops.load_library``; later processes load the cached file. Nothing is compiled where the
CPU lacks the instructions a kernel needs, where ``VLKIT_CPP_KERNELS=0``, or where no compiler
is found: then :func:`int4_ops` returns ``None`` and the caller uses PyTorch's own kernels. A
failed build is logged once with the compiler's message and not retried in that process.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import threading
from pathlib import Path
from typing import Any

logger = logging.getLogger("vlkit.kernels")

_SRC = Path(__file__).with_name("quant_gemm.cpp")
_INT4_FLAGS = ("avx512f", "avx512bw", "avx512vl", "avx512_bf16")
_lock = threading.Lock()
_state: dict[str, Any] = {}


def cpu_flags() -> set[str]:
    """The CPU feature flags Linux reports (empty elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def _cache_dir() -> Path:
    return Path(os.environ.get("VLKIT_KERNEL_CACHE") or Path.home() / ".cache" / "vlkit" / "kernels")


def _compile_command(src: Path, out: Path) -> list[str]:
    import torch
    from torch.utils import cpp_extension

    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    cxx = os.environ.get("CXX") or "g++"
    cmd = [cxx, "-O3", "-std=c++17", "-shared", "-fPIC", "-fopenmp", "-w",
           "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512bf16", "-mfma",
           f"-D_GLIBCXX_USE_CXX11_ABI={abi}"]
    cmd += [f"-I{p}" for p in cpp_extension.include_paths()] + [f"-I{sysconfig.get_paths()['include']}"]
    cmd += [str(src), "-o", str(out)]
    cmd += [f"-L{p}" for p in cpp_extension.library_paths()] + ["-lc10", "-ltorch_cpu", "-ltorch"]
    return cmd


def _build(src: Path) -> Path:
    import torch

    probe = _compile_command(src, Path("OUT"))
    key = hashlib.sha256(src.read_bytes() + " ".join(probe).encode() + torch.__version__.encode()
                         + sys.version.encode()).hexdigest()[:16]
    out = _cache_dir() / f"{src.stem}-{key}.so"
    if out.is_file():
        return out
    if shutil.which(probe[0]) is None:
        raise RuntimeError(f"no C++ compiler ({probe[0]!r}) on PATH")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:  # build beside, then rename: atomic
        part = Path(tmp) / out.name
        res = subprocess.run(_compile_command(src, part), capture_output=True, text=True)
        if res.returncode != 0:
            raise RuntimeError(f"{probe[0]} failed ({res.returncode}): {res.stderr.strip()[-2000:]}")
        os.replace(part, out)
    logger.info("built %s", out)
    return out


def int4_ops() -> Any | None:
    """``torch.ops.vlkit_kernels`` with ``int4_linear`` and ``int4_dequantize``, or ``None``
    where they cannot run here (see the module docstring)."""
    if "int4" in _state:
        return _state["int4"]
    with _lock:
        if "int4" in _state:
            return _state["int4"]
        ops = None
        if os.environ.get("VLKIT_CPP_KERNELS", "1") == "0":
            _state["int4_why"] = "VLKIT_CPP_KERNELS=0"
        elif not set(_INT4_FLAGS) <= cpu_flags():
            _state["int4_why"] = "the CPU lacks " + ", ".join(sorted(set(_INT4_FLAGS) - cpu_flags()))
        else:
            try:
                import torch

                torch.ops.load_library(str(_build(_SRC)))
                ops = torch.ops.vlkit_kernels
                _state["int4_why"] = "loaded"
            except Exception as exc:  # a missing compiler or headers: PyTorch's kernels instead
                _state["int4_why"] = f"build failed: {exc}"
                logger.warning("vlkit's int4 CPU kernel is not available (%s); using PyTorch's", exc)
        _state["int4"] = ops
        return ops


def kernel_status() -> dict[str, str]:
    """Why each kernel is or is not in use in this process (after it was first asked for)."""
    return {"int4": _state.get("int4_why", "not requested yet")}
