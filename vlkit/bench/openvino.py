"""OpenVINO as a peer in ``vlkit bench`` (``--peers hf,openvino``): the seed notebooks' CPU anchor.

OpenVINO's exporter (optimum-intel 2.2) pins ``transformers<5.6`` while vlkit needs 5.25, so the
peer lives in its own virtual environment and is reached through its Python
(``--openvino-python`` or ``$VLKIT_OPENVINO_PYTHON``). Make one with::

    python -m vlkit.bench.openvino setup /path/to/ov-venv

which installs (versions checked 2026-12): ``torch==2.13.0`` (the CPU wheel; never another),
openvino / openvino-genai / openvino-tokenizers 2026.4, nncf 3.4, optimum 2.3,
``transformers==5.5.4``, and ``optimum-intel==2.2.0`` without its dependencies (it lists
torchvision, which the export does not need and which breaks beside the CPU torch).

For each precision the same checkpoint is exported once (cached under ``--openvino-cache``):

- fp32: ``--weight-format fp32``, run with ``INFERENCE_PRECISION_HINT=f32``;
- bf16: ``--weight-format fp16`` (there is no bf16 format), run with the hint ``bf16``;
- int8: ``--weight-format int8`` (per-channel, asymmetric, NNCF);
- int4: ``--weight-format int4 --group-size 128 --ratio 1.0 --sym --all-layers`` (every LM linear
  and the LM head symmetric int4 g128, as vlkit's ``int4``; NNCF keeps the embedding table and
  the vision encoder in int8).

The KV cache runs at the activation precision (f32 / bf16; the CPU plugin's default is u8).
Before export the checkpoint is copied with the CLIP tower under the
``vision_tower.vision_model.*`` names transformers 5.5 expects (5.25 saves ``vision_tower.*``,
which 5.5 silently re-initialises) and a ``preprocessor_config.json`` (OpenVINO GenAI does not
read transformers 5's ``processor_config.json``).

Two OpenVINO systems run the same requests: GenAI's ``ContinuousBatchingPipeline`` (its VLM
continuous batching; all requests added, then stepped) and optimum-intel's
``OVModelForVisualCausalLM`` (one batched ``generate``); each in its own process
(:mod:`vlkit.bench.ov_runner`, run with ``python -I`` so that this module does not shadow the
``openvino`` package), timed end to end from the PNG files after one warm-up run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

EXPORT_ARGS = {
    "fp32": ["--weight-format", "fp32"],
    "bf16": ["--weight-format", "fp16"],
    "int8": ["--weight-format", "int8"],
    "int4": ["--weight-format", "int4", "--group-size", "128", "--ratio", "1.0", "--sym", "--all-layers"],
}
BACKENDS = ("genai", "optimum")
SETUP_PACKAGES = ["openvino==2026.4.1", "openvino-genai==2026.4.1.0", "openvino-tokenizers==2026.4.1.0",
                  "nncf==3.4.0", "optimum~=2.3.0", "transformers==5.5.4", "huggingface-hub>=0.23.2,<1.22",
                  "setuptools", "pillow"]
RUNNER = Path(__file__).with_name("ov_runner.py")


class OpenVINOUnavailable(RuntimeError):
    """No OpenVINO environment was given, or it cannot export or run."""


def openvino_python(explicit: str | None = None) -> str:
    py = explicit or os.environ.get("VLKIT_OPENVINO_PYTHON")
    if not py:
        raise OpenVINOUnavailable(
            "the openvino peer needs the Python of an OpenVINO virtual environment: pass --openvino-python "
            "PATH or set VLKIT_OPENVINO_PYTHON (make one with: python -m vlkit.bench.openvino setup DIR)")
    if not Path(py).is_file():
        raise OpenVINOUnavailable(f"--openvino-python {py!r} does not exist")
    return py


def hf4_copy(checkpoint: str | Path, out: str | Path) -> Path:
    """A copy of a transformers-5.25 LLaVA checkpoint that transformers 5.5 / OpenVINO GenAI read
    with the same weights (the renames and the file described in the module docstring)."""
    from safetensors.torch import load_file, save_file

    checkpoint, out = Path(checkpoint), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for f in checkpoint.iterdir():
        if f.is_file() and not f.name.endswith(".safetensors") and f.name != "model.safetensors.index.json":
            shutil.copy2(f, out / f.name)
    index: dict[str, str] = {}
    for f in sorted(checkpoint.glob("*.safetensors")):
        state = {}
        for k, v in load_file(str(f)).items():
            for old, new in (("vision_tower.", "vision_tower.vision_model."),
                             ("model.vision_tower.", "model.vision_tower.vision_model.")):
                if k.startswith(old) and not k.startswith(new):
                    k = new + k[len(old):]
            state[k] = v.contiguous()
            index[k] = f.name
        save_file(state, str(out / f.name), metadata={"format": "pt"})
    if (checkpoint / "model.safetensors.index.json").is_file():
        meta = json.loads((checkpoint / "model.safetensors.index.json").read_text()).get("metadata", {})
        (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": meta, "weight_map": index}))
    write_preprocessor_config(checkpoint, out)
    return out


def write_preprocessor_config(checkpoint: Path, out: Path) -> None:
    proc = checkpoint / "processor_config.json"
    if (checkpoint / "preprocessor_config.json").is_file():
        if checkpoint != out:
            shutil.copy2(checkpoint / "preprocessor_config.json", out / "preprocessor_config.json")
        return
    if not proc.is_file():
        return
    ip = dict(json.loads(proc.read_text()).get("image_processor") or {})
    if ip:
        ip.setdefault("processor_class", "LlavaProcessor")
        (out / "preprocessor_config.json").write_text(json.dumps(ip, indent=2))


def export(python: str, checkpoint: str | Path, cache: str | Path, precision: str) -> Path:
    """The OpenVINO IR of ``checkpoint`` at ``precision`` (exported once into ``cache``)."""
    if precision not in EXPORT_ARGS:
        raise OpenVINOUnavailable(f"no OpenVINO export for precision {precision!r} (have {', '.join(EXPORT_ARGS)})")
    cache = Path(cache)
    out = cache / f"ov-{precision}"
    if (out / "openvino_language_model.xml").is_file():
        return out
    src = cache / "hf4"
    if not (src / "config.json").is_file():
        hf4_copy(checkpoint, src)
    cmd = [python, "-m", "optimum.commands.optimum_cli", "export", "openvino", "--model", str(src),
           "--task", "image-text-to-text", *EXPORT_ARGS[precision], str(out)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise OpenVINOUnavailable(f"OpenVINO export failed ({' '.join(cmd)}):\n{res.stderr[-3000:]}")
    write_preprocessor_config(src, out)
    return out


def write_requests(reqs: list[tuple[str, bytes]], directory: str | Path) -> Path:
    """The benchmark's ``(question, PNG bytes)`` requests as files and a JSON list for the runner."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    items = []
    for i, (q, png) in enumerate(reqs):
        p = directory / f"img{i:03d}.png"
        p.write_bytes(png)
        items.append({"question": q, "image": str(p)})
    path = directory / "requests.json"
    path.write_text(json.dumps(items))
    return path


def run(python: str, model_dir: Path, requests_json: Path, new_tokens: int, precision: str, backend: str) -> dict[str, Any]:
    """One timed run of the OpenVINO ``backend`` ("genai" or "optimum") in its own process."""
    cmd = [python, "-I", str(RUNNER), "--model", str(model_dir), "--requests", str(requests_json), "--new-tokens",
           str(new_tokens), "--precision", precision, "--backend", backend]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise OpenVINOUnavailable(f"OpenVINO {backend} run failed ({' '.join(cmd)}):\n{res.stderr[-3000:]}")
    out = json.loads(res.stdout.strip().splitlines()[-1])
    return {"seconds": out["seconds"], "output_tokens": out["output_tokens"], "tok_per_s": out["tok_s"],
            "versions": out.get("versions"), "config": out.get("config")}


def setup(venv: str | Path) -> str:
    """Create the OpenVINO venv (the pins in the module docstring); returns its Python."""
    venv = Path(venv)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = str(venv / "bin" / "python")
    pin = venv / "constraints.txt"
    pin.write_text("torch==2.13.0\n")
    pip = [py, "-m", "pip", "install", "-q", "-c", str(pin)]
    subprocess.run(pip + ["torch==2.13.0"], check=True)
    subprocess.run(pip + ["torch==2.13.0", *SETUP_PACKAGES], check=True)
    subprocess.run(pip + ["--no-deps", "optimum-intel==2.2.0"], check=True)
    return py


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m vlkit.bench.openvino")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("setup", help="create the OpenVINO virtual environment for --peers openvino")
    s.add_argument("venv")
    args = p.parse_args(argv)
    py = setup(args.venv)
    print(f"OpenVINO peer ready: pass --openvino-python {py} (or set VLKIT_OPENVINO_PYTHON)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
