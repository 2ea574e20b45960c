"""``vlkit demo``: the whole stack on a tiny random-weight checkpoint that vlkit writes itself.

No download, no GPU: the family's tiny-checkpoint factory (the one the conformance kit uses)
writes a real on-disk checkpoint, and a prompt with the bundled image runs through the
registry, the VisionModel, the chat template, the paged-KV engine and the detokenizer. The
weights are random, so the text is noise; the point is that every piece runs.
"""

from __future__ import annotations

import tempfile
import time
from importlib import resources
from pathlib import Path
from typing import Any

BANNER = (
    "NOTE: this checkpoint has RANDOM WEIGHTS, written by vlkit for this demo; the generated text is "
    "meaningless. It shows the whole stack running: plugin registry -> vision tower -> chat template -> "
    "paged-KV engine -> detokenizer."
)


def demo_image_path() -> Path:
    return Path(str(resources.files("vlkit").joinpath("assets", "demo.png")))


def pick_family(reg: Any, wanted: str | None) -> Any:
    """The family to demo: ``wanted`` by family name or by plugin name (``qwen``: that plugin's
    first family), else llava when installed, else the first installed family with a
    tiny-checkpoint factory. :raises LookupError: with what is installed."""
    fams = [f for f in reg.families() if f.tiny_checkpoint is not None]
    names = [f.name for f in fams]
    if wanted is None:
        preferred = [f for f in fams if f.name == "llava"] or fams
        if not preferred:
            raise LookupError("no model family with a tiny checkpoint is installed "
                              "(pip install vlkit-plugin-llava, or any vlkit-plugin-*)")
        return preferred[0]
    for fam in fams:
        if fam.name == wanted:
            return fam
    by_plugin = [f for f in fams if f.plugin == wanted]
    if by_plugin:
        return by_plugin[0]
    raise LookupError(f"no installed family or plugin named {wanted!r} (pip install vlkit-plugin-{wanted}); "
                      f"installed families: {names or 'none'}")


def run_demo(directory: str | None = None, family: str | None = None, prompt: str = "Describe this image.",
             max_new_tokens: int = 24, webui: bool = False, host: str = "127.0.0.1", port: int = 7860) -> int:
    """Write the tiny checkpoint and run ``prompt`` with the bundled image through it; with
    ``webui``, serve the chat page for it instead (until Ctrl-C)."""
    import vlkit
    from vlkit.contract.registry import get_registry

    try:
        fam = pick_family(get_registry(), family)
    except LookupError as exc:
        print(f"vlkit demo: {exc}")
        return 2
    family = fam.name
    root = Path(directory) if directory else Path(tempfile.mkdtemp(prefix="vlkit-demo-"))
    print(BANNER)
    t0 = time.perf_counter()
    ckpt = fam.tiny_checkpoint(root / f"tiny-{family}")
    print(f"wrote tiny random-weight {family} checkpoint to {ckpt} ({time.perf_counter() - t0:.1f}s)")
    image = demo_image_path()
    if webui:
        return _demo_webui(ckpt, image, host, port, max_new_tokens)
    t0 = time.perf_counter()
    with vlkit.pipeline(str(ckpt)) as pipe:
        t1 = time.perf_counter()
        r = pipe((prompt, vlkit.load_image(str(image))), gen_config=vlkit.GenerationConfig(max_new_tokens=max_new_tokens))
        t2 = time.perf_counter()
    print(f"image: {image}")
    print(f"prompt: {prompt!r}")
    print(f"response ({r.generate_token_len} tokens, finish_reason={r.finish_reason}): {r.text!r}")
    print(f"load {t1 - t0:.1f}s, generate {t2 - t1:.2f}s, {r.input_token_len} prompt tokens")
    return 0


def _demo_webui(ckpt: Path, image: Path, host: str, port: int, max_new_tokens: int) -> int:
    try:
        import uvicorn  # noqa: F401

        from vlkit.webui import create_local_app, serve_page
    except ImportError as exc:
        print(f"vlkit demo --webui: the web UI needs the webui extra: pip install 'vlkit[webui]' ({exc})")
        return 2
    import vlkit

    with vlkit.pipeline(str(ckpt)) as pipe:
        app = create_local_app(pipe, model_name=ckpt.name, max_new_tokens=max_new_tokens)
        print(f"drop an image into the page (one to try: {image})")
        return serve_page(app, host, port, f"chat page for the random-weight {ckpt.name}")
