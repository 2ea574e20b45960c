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

BANNER = (
    "NOTE: this checkpoint has RANDOM WEIGHTS, written by vlkit for this demo; the generated text is "
    "meaningless. It shows the whole stack running: plugin registry -> vision tower -> chat template -> "
    "paged-KV engine -> detokenizer."
)


def demo_image_path() -> Path:
    return Path(str(resources.files("vlkit").joinpath("assets", "demo.png")))


def run_demo(directory: str | None = None, family: str = "llava", prompt: str = "Describe this image.",
             max_new_tokens: int = 24) -> int:
    import vlkit
    from vlkit.contract.registry import get_registry

    reg = get_registry()
    try:
        fam = reg.get_family(family)
    except KeyError:
        print(f"vlkit demo: family {family!r} is not installed (pip install vlkit-plugin-{family}); "
              f"installed: {[f.name for f in reg.families()] or 'none'}")
        return 2
    if fam.tiny_checkpoint is None:
        print(f"vlkit demo: family {family!r} has no tiny-checkpoint factory")
        return 2
    root = Path(directory) if directory else Path(tempfile.mkdtemp(prefix="vlkit-demo-"))
    print(BANNER)
    t0 = time.perf_counter()
    ckpt = fam.tiny_checkpoint(root / f"tiny-{family}")
    print(f"wrote tiny random-weight {family} checkpoint to {ckpt} ({time.perf_counter() - t0:.1f}s)")
    image = demo_image_path()
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
