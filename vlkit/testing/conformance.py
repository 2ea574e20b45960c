"""The conformance suite every model-family plugin's tests subclass.

In the manner of pandas' extension-array base tests: a plugin writes ::

    from vlkit.testing.conformance import VLMConformanceSuite, TransformersReference

    class TestLlava(VLMConformanceSuite):
        family = "llava"                      # its tiny_checkpoint factory writes the checkpoint
        checkpoint_options = {"seed": 0}

        def make_reference(self, model_dir):
            from transformers import LlavaForConditionalGeneration
            return TransformersReference(model_dir, LlavaForConditionalGeneration)

and inherits every ``test_*`` below: prompt ids equal the reference processor's; 16 greedy
tokens equal the reference ``generate`` for one image, two images in one prompt, three
different requests batched, images of many sizes and aspect ratios, RGBA, grayscale and an
EXIF-rotated JPEG; prompt logits close to the reference's; TP=2 equal to TP=1 (``slow``);
bad input (undecodable bytes, an unreachable URL, more images than ``IMAGE_TOKEN`` s, a prompt
over ``session_len``) raising a clear ``ValueError``; a batch of four with one bad request
where the other three complete.

What a subclass defines
-----------------------
``family`` (or override :meth:`~VLMConformanceSuite.make_checkpoint`)
    the installed family whose ``tiny_checkpoint(directory, **checkpoint_options)`` writes
    the checkpoint under test.
``make_reference(model_dir)`` (required)
    a callable ``(messages, max_new_tokens) -> Reference``: the reference implementation's
    prompt ids and ``max_new_tokens`` greedy tokens with EOS masked until then (HF's
    ``min_new_tokens``), optionally prompt logits, for HF-form messages whose
    image parts are ``{"type": "image", "image": PIL.Image}``. :class:`TransformersReference`
    is the ready-made one for a transformers processor + model class.
Optional class attributes
    ``checkpoint_options``, ``engine_options`` (``EngineConfig`` fields), ``vision_options``,
    ``chat_template_options``, ``max_new_tokens`` (16), ``session_len``, ``logits_atol``,
    ``skip_tests`` (``{"test_name": "why"}``: documented skips), ``image_kinds`` (which
    :func:`make_test_image` kinds the size/format test runs).

Helpers for a plugin's own tests
    ``user_turn(text, images, reference=False)`` (one HF-form user message, images first; with
    ``reference=True`` the images as the reference gets them; a multi-turn conversation is
    ``user_turn(...) + [{"role": "assistant", ...}] + user_turn(...)``), :func:`make_test_image`
    and :func:`upright_rgb`. ``run_case``, ``check_prompt`` and ``check_greedy`` compare one
    case of your own with the reference, as the inherited tests do.

Checkpoint, pipeline and reference are class-scoped fixtures: each subclass builds them once.
The pipeline runs on CPU in float32 so that parity is exact to fp32 rounding.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pytest

from vlkit.contract.messages import IMAGE_TOKEN

__all__ = ["IMAGE_KINDS", "Reference", "TransformersReference", "VLMConformanceSuite", "make_test_image", "upright_rgb",
           "user_turn"]


@dataclass
class Reference:
    """What the reference implementation does with one prompt.

    Args:
        prompt_ids: the ids it feeds the model (image positions included).
        image_token_id: the id at image positions in ``prompt_ids`` (positions are compared;
            the id itself may differ from vlkit's, e.g. the original LLaVA uses ``-200``).
        generated: ``max_new_tokens`` greedy tokens with EOS masked until then (HF:
            ``min_new_tokens=max_new_tokens``): tiny random models often pick EOS first, which
            would leave nothing to compare.
        logits: prompt logits ``[len(prompt_ids), vocab]``, when the reference gives them.
    """

    prompt_ids: list[int]
    image_token_id: int | None
    generated: list[int]
    logits: Any = None


class TransformersReference:
    """Reference from a transformers processor and model class (fp32, CPU, greedy).

    ``processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)``
    gives the prompt ids and pixels; ``model.generate(do_sample=False)`` the tokens.
    """

    def __init__(self, model_dir: str | Path, model_cls: Any, processor: Any = None, **model_kwargs: Any) -> None:
        import torch
        from transformers import AutoProcessor

        self.processor = processor or AutoProcessor.from_pretrained(str(model_dir))
        self.model = model_cls.from_pretrained(str(model_dir), dtype=torch.float32, **model_kwargs).eval()
        cfg = self.model.config
        self.image_token_id = getattr(cfg, "image_token_id", None)
        if self.image_token_id is None:
            self.image_token_id = getattr(cfg, "image_token_index", None)

    def inputs(self, messages: list[dict[str, Any]]) -> Any:
        return self.processor.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
        )

    def __call__(self, messages: list[dict[str, Any]], max_new_tokens: int) -> Reference:
        import torch

        inputs = self.inputs(messages)
        n = inputs["input_ids"].shape[1]
        with torch.inference_mode():
            logits = self.model(**inputs).logits[0].float()
            out = self.model.generate(
                **inputs, max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens, do_sample=False,
                num_beams=1, pad_token_id=self._pad_id(),
            )
        return Reference(inputs["input_ids"][0].tolist(), self.image_token_id, out[0, n:].tolist(), logits)

    def _pad_id(self) -> int | None:
        tok = getattr(self.processor, "tokenizer", self.processor)
        pad = getattr(tok, "pad_token_id", None)
        return pad if pad is not None else getattr(tok, "eos_token_id", None)


# -- test images ----------------------------------------------------------------------------

# kind -> (width, height, PIL mode), as vlkit.testing.images.image_set names them
_IMAGE_TABLE: dict[str, tuple[int, int, str]] = {
    "square": (64, 64, "RGB"), "wide": (300, 120, "RGB"), "tall": (120, 300, "RGB"), "tiny": (10, 10, "RGB"),
    "large": (1000, 700, "RGB"), "rgba": (80, 60, "RGBA"), "grayscale": (60, 80, "L"), "palette": (72, 48, "P"),
    "la": (50, 50, "LA"), "cmyk": (48, 72, "CMYK"), "i16": (40, 30, "I;16"),
}
IMAGE_KINDS = (*_IMAGE_TABLE, "exif_jpeg")


def make_test_image(kind: str, seed: int = 0) -> Any:
    """A deterministic test image (:func:`vlkit.testing.images.make_image`) of one kind.

    Kinds: those of :func:`vlkit.testing.images.image_set` (``square`` 64x64, ``wide``
    300x120, ``tall`` 120x300, ``tiny`` 10x10, ``large`` 1000x700, ``rgba``, ``grayscale``,
    ``palette``, ``la``, ``cmyk``, ``i16``) and ``exif_jpeg``: JPEG *bytes* stored 64x40
    with EXIF orientation 6 (upright 40x64), so the pipeline's decoding path runs too.
    """
    from vlkit.testing.images import exif_rotated_jpeg, make_image

    if kind == "exif_jpeg":
        return exif_rotated_jpeg(64, 40, seed + 11)[0]
    if kind not in _IMAGE_TABLE:
        raise ValueError(f"unknown test image kind {kind!r}; have {list(IMAGE_KINDS)}")
    w, h, mode = _IMAGE_TABLE[kind]
    return make_image(w, h, mode, seed + sum(map(ord, kind)))


def upright_rgb(image: Any) -> Any:
    """What the reference processor is given for a test image.

    Bytes are decoded and EXIF orientation applied (transformers' processors do neither).
    Images with transparency and 16-bit images go through :func:`vlkit.api.media.to_rgb`
    (alpha composited on white): transformers changed its own rule between versions (5.17
    drops alpha, 5.23 composites on white) and cannot convert 16-bit images; vlkit's rule is
    the core's, the same for every family. Other modes (L, P, CMYK) are given as they are, so
    the reference's own conversion is what vlkit must match.
    """
    import base64

    from PIL import Image, ImageOps

    if isinstance(image, str) and image.startswith("data:"):
        image = base64.b64decode(image.split(",", 1)[1])
    if isinstance(image, (bytes, bytearray)):
        image = Image.open(io.BytesIO(image))
        image.load()
    image = ImageOps.exif_transpose(image)
    if image.mode.startswith("I;16") or image.mode in ("I", "RGBA", "LA", "PA") or "transparency" in image.info:
        from vlkit.api.media import to_rgb

        image = to_rgb(image)
    return image


def user_turn(text: str, images: list[Any], reference: bool = False) -> list[dict[str, Any]]:
    """One user turn, images first. ``reference``: the images as :func:`upright_rgb` gives them.

    On the vlkit side a ``data:`` URI string becomes an OpenAI ``image_url`` part; everything
    else an ``{"type": "image", "image": ...}`` part.
    """
    content: list[dict[str, Any]] = []
    for im in images:
        if reference:
            content.append({"type": "image", "image": upright_rgb(im)})
        elif isinstance(im, str):
            content.append({"type": "image_url", "image_url": {"url": im}})
        else:
            content.append({"type": "image", "image": im})
    content.append({"type": "text", "text": text})
    return [{"role": "user", "content": content}]


def _strip_eos(tokens: list[int], eos: set[int]) -> list[int]:
    out = list(tokens)
    while out and out[-1] in eos:
        out.pop()
    return out


# -- the suite ------------------------------------------------------------------------------


class VLMConformanceSuite:
    """Base class of a family's conformance tests (not collected itself: no ``Test`` prefix)."""

    family: ClassVar[str | None] = None
    checkpoint_options: ClassVar[dict[str, Any]] = {}
    engine_options: ClassVar[dict[str, Any]] = {}
    vision_options: ClassVar[dict[str, Any]] = {}
    chat_template_options: ClassVar[dict[str, Any]] = {}
    max_new_tokens: ClassVar[int] = 16
    session_len: ClassVar[int] = 2048
    logits_atol: ClassVar[float] = 1e-4
    skip_tests: ClassVar[dict[str, str]] = {}
    image_kinds: ClassVar[tuple[str, ...]] = IMAGE_KINDS

    # -- what a subclass supplies ----------------------------------------------------------
    def make_checkpoint(self, directory: Path) -> Path:
        """Write the tiny checkpoint under test into ``directory``; return its path."""
        if self.family is None:
            raise NotImplementedError(f"{type(self).__name__}: set `family` or override make_checkpoint()")
        from vlkit.contract.registry import get_registry

        fam = get_registry().get_family(self.family)
        if fam.tiny_checkpoint is None:
            raise NotImplementedError(f"family {self.family!r} has no tiny_checkpoint factory")
        return Path(fam.tiny_checkpoint(directory, **self.checkpoint_options))

    def make_reference(self, model_dir: Path) -> Callable[[list[dict[str, Any]], int], Reference]:
        """The reference implementation for ``model_dir`` (see :class:`TransformersReference`)."""
        raise NotImplementedError(f"{type(self).__name__} must define make_reference(model_dir)")

    def make_pipeline(self, model_dir: Path, **engine_overrides: Any) -> Any:
        import vlkit
        from vlkit.config import ChatTemplateConfig, EngineConfig, VisionConfig

        opts = {"session_len": self.session_len, "device": "cpu", "dtype": "float32", "num_blocks": 512}
        opts.update(self.engine_options)
        opts.update(engine_overrides)
        return vlkit.pipeline(
            model_dir,
            engine_config=EngineConfig(**opts),
            vision_config=VisionConfig(**self.vision_options),
            chat_template_config=ChatTemplateConfig(**self.chat_template_options),
        )

    # -- fixtures --------------------------------------------------------------------------
    @pytest.fixture(autouse=True)
    def _documented_skips(self, request: Any) -> None:
        name = getattr(request.node, "originalname", None) or request.node.name
        if name in self.skip_tests:
            pytest.skip(self.skip_tests[name])

    # class-scoped fixtures are classmethods (pytest runs them once per subclass, on no instance)
    @pytest.fixture(scope="class")
    @classmethod
    def checkpoint(cls, tmp_path_factory: Any) -> Path:
        return cls().make_checkpoint(tmp_path_factory.mktemp(f"{cls.__name__}-ckpt") / "model")

    @pytest.fixture(scope="class")
    @classmethod
    def reference(cls, checkpoint: Path) -> Callable[[list[dict[str, Any]], int], Reference]:
        return cls().make_reference(checkpoint)

    @pytest.fixture(scope="class")
    @classmethod
    def pipe(cls, checkpoint: Path) -> Any:
        p = cls().make_pipeline(checkpoint)
        yield p
        p.close()

    @pytest.fixture(scope="class")
    @classmethod
    def eos_ids(cls, pipe: Any) -> set[int]:
        tok = pipe.tokenizer
        ids = {tok.eos_token_id} if getattr(tok, "eos_token_id", None) is not None else set()
        return ids

    # -- helpers ---------------------------------------------------------------------------
    def gen_config(self) -> Any:
        from vlkit.config import GenerationConfig

        return GenerationConfig(max_new_tokens=self.max_new_tokens, min_new_tokens=self.max_new_tokens)

    def check_prompt(self, pipe: Any, ref: Reference, prompt: Any) -> dict[str, Any]:
        got = pipe.prepare_inputs(prompt)
        ids = list(got["input_ids"])
        mine = sorted(i for s, e in got["input_embedding_ranges"] for i in range(s, e))
        theirs = [i for i, t in enumerate(ref.prompt_ids) if ref.image_token_id is not None and t == ref.image_token_id]
        assert len(ids) == len(ref.prompt_ids), (
            f"prompt length {len(ids)} != reference {len(ref.prompt_ids)}\nvlkit prompt: {got['prompt']!r}"
        )
        assert mine == theirs, "image positions differ from the reference's"
        text_ids = [t for i, t in enumerate(ids) if i not in set(mine)]
        ref_text_ids = [t for i, t in enumerate(ref.prompt_ids) if i not in set(theirs)]
        assert text_ids == ref_text_ids, f"prompt ids differ from the reference's\nvlkit prompt: {got['prompt']!r}"
        for (s, e), emb in zip(got["input_embedding_ranges"], got["input_embeddings"]):
            assert emb.shape[0] == e - s
        return got

    def check_greedy(self, response: Any, ref: Reference, eos: set[int], what: str) -> None:
        assert response.finish_reason in ("stop", "length"), f"{what}: {response.finish_reason}: {response.error}"
        assert _strip_eos(response.token_ids, eos) == _strip_eos(ref.generated, eos), (
            f"{what}: greedy tokens differ from the reference\nvlkit:     {response.token_ids}\n"
            f"reference: {ref.generated}"
        )

    def run_case(self, pipe: Any, reference: Any, eos: set[int], text: str, images: list[Any], what: str) -> Any:
        ref = reference(user_turn(text, images, True), self.max_new_tokens)
        prompt = user_turn(text, images, False)
        self.check_prompt(pipe, ref, prompt)
        r = pipe(prompt, gen_config=self.gen_config(), use_tqdm=False)
        self.check_greedy(r, ref, eos, what)
        return r

    # -- prompt ids --------------------------------------------------------------------------
    def test_prompt_ids_one_image(self, pipe: Any, reference: Any) -> None:
        img = make_test_image("wide")
        ref = reference(user_turn("What is in this image?", [img], True), 1)
        self.check_prompt(pipe, ref, user_turn("What is in this image?", [img], False))

    def test_prompt_ids_two_images(self, pipe: Any, reference: Any) -> None:
        imgs = [make_test_image("square"), make_test_image("tall")]
        ref = reference(user_turn("Compare the two pictures.", imgs, True), 1)
        self.check_prompt(pipe, ref, user_turn("Compare the two pictures.", imgs, False))

    def test_prompt_ids_multi_turn(self, pipe: Any, reference: Any) -> None:
        img1, img2 = make_test_image("square"), make_test_image("wide", seed=1)

        def conv(reference: bool) -> list[dict[str, Any]]:
            first = user_turn("What is this?", [img1], reference)
            return first + [
                {"role": "assistant", "content": [{"type": "text", "text": "A red bicycle."}]},
                *user_turn("And this one?", [img2], reference),
            ]

        ref = reference(conv(True), 1)
        self.check_prompt(pipe, ref, conv(False))

    def test_prompt_ids_text_only(self, pipe: Any, reference: Any) -> None:
        msgs = [{"role": "user", "content": [{"type": "text", "text": "Tell me a story about a lighthouse."}]}]
        ref = reference(msgs, 1)
        self.check_prompt(pipe, ref, msgs)

    # -- greedy parity ---------------------------------------------------------------------
    def test_greedy_one_image(self, pipe: Any, reference: Any, eos_ids: set[int]) -> None:
        self.run_case(pipe, reference, eos_ids, "Describe the picture in detail.", [make_test_image("square")], "one image")

    def test_greedy_two_images(self, pipe: Any, reference: Any, eos_ids: set[int]) -> None:
        from vlkit.testing.images import data_uri

        imgs = [data_uri(make_test_image("wide")), make_test_image("tall")]  # one as an image_url data: URI
        self.run_case(pipe, reference, eos_ids, "Which one is larger?", imgs, "two images")

    def test_greedy_batch_of_three(self, pipe: Any, reference: Any, eos_ids: set[int]) -> None:
        cases = [
            ("What is in this image?", [make_test_image("square", seed=3)]),
            ("Compare these.", [make_test_image("wide", seed=4), make_test_image("tall", seed=5)]),
            ("How many people are there?", [make_test_image("large", seed=6)]),
        ]
        refs = [reference(user_turn(t, ims, True), self.max_new_tokens) for t, ims in cases]
        rs = pipe([user_turn(t, ims, False) for t, ims in cases], gen_config=self.gen_config(), use_tqdm=False)
        assert len(rs) == 3
        for i, (r, ref) in enumerate(zip(rs, refs)):
            assert r.index == i
            self.check_greedy(r, ref, eos_ids, f"batched request {i}")

    @pytest.mark.parametrize("kind", IMAGE_KINDS)
    def test_greedy_image_kinds(self, pipe: Any, reference: Any, eos_ids: set[int], kind: str) -> None:
        if kind not in self.image_kinds:
            pytest.skip(f"{type(self).__name__}.image_kinds leaves out {kind!r}")
        self.run_case(pipe, reference, eos_ids, "What is shown here?", [make_test_image(kind)], f"{kind} image")

    def test_prompt_logits_close(self, pipe: Any, reference: Any) -> None:
        import torch

        img = make_test_image("tall", seed=2)
        ref = reference(user_turn("Describe it.", [img], True), 1)
        if ref.logits is None:
            pytest.skip("the reference gives no logits")
        inputs = pipe.prepare_inputs(user_turn("Describe it.", [img], False))
        logits = pipe.get_logits(inputs).float().cpu()
        ref_logits = torch.as_tensor(ref.logits).float().cpu()
        vocab = min(logits.shape[-1], ref_logits.shape[-1])
        assert logits.shape[0] == ref_logits.shape[0]
        diff = (logits[:, :vocab] - ref_logits[:, :vocab]).abs().max().item()
        assert diff <= self.logits_atol, f"prompt logits differ from the reference by {diff:.3g} (atol {self.logits_atol})"

    # -- tensor parallelism ----------------------------------------------------------------
    @pytest.mark.slow
    def test_tp2_equals_tp1(self, checkpoint: Path, pipe: Any) -> None:
        prompts = [
            ("Describe the picture.", make_test_image("square")),
            ("Compare them.", [make_test_image("wide"), make_test_image("exif_jpeg")]),
        ]
        one = pipe(prompts, gen_config=self.gen_config(), use_tqdm=False)
        with self.make_pipeline(checkpoint, tp=2) as pipe2:
            two = pipe2(prompts, gen_config=self.gen_config(), use_tqdm=False)
        for a, b in zip(one, two):
            assert a.finish_reason != "error" and b.finish_reason != "error", (a.error, b.error)
            assert a.token_ids == b.token_ids

    # -- bad input -------------------------------------------------------------------------
    @pytest.mark.parametrize("which", ["garbage", "corrupt_png", "truncated_png"])
    def test_bad_image_bytes(self, pipe: Any, which: str) -> None:
        from vlkit.testing.images import corrupt_image_bytes, truncated_image_bytes

        data = {"garbage": b"this is not an image", "corrupt_png": corrupt_image_bytes(),
                "truncated_png": truncated_image_bytes()}[which]
        with pytest.raises(ValueError, match=r"(?i)decode|image"):
            pipe(("Describe.", data), gen_config=self.gen_config(), use_tqdm=False)

    def test_unreachable_url(self, pipe: Any) -> None:
        url = "http://127.0.0.1:9/x.png"
        with pytest.raises(ValueError) as info:
            pipe(("Describe.", url), gen_config=self.gen_config(), use_tqdm=False)
        assert "127.0.0.1:9" in str(info.value)

    def test_more_images_than_tokens(self, pipe: Any) -> None:
        img = make_test_image("square")
        with pytest.raises(ValueError, match=IMAGE_TOKEN):
            pipe((f"{IMAGE_TOKEN} what are these?", [img, img]), gen_config=self.gen_config(), use_tqdm=False)

    def test_prompt_over_session_len(self, pipe: Any) -> None:
        text = "the lighthouse keeper climbed the stairs " * (self.session_len // 2)
        with pytest.raises(ValueError, match="session_len"):
            pipe((text, make_test_image("square")), gen_config=self.gen_config(), use_tqdm=False)

    def test_one_bad_request_in_batch(self, pipe: Any, reference: Any, eos_ids: set[int]) -> None:
        good = [
            ("What is in this image?", [make_test_image("square", seed=7)]),
            ("Describe it.", [make_test_image("wide", seed=8)]),
            ("Is there any text?", [make_test_image("tall", seed=9)]),
        ]
        prompts: list[Any] = [user_turn(t, ims, False) for t, ims in good]
        prompts.insert(2, ("Describe.", b"\x89PNG\r\n\x1a\n broken"))
        rs = pipe(prompts, gen_config=self.gen_config(), use_tqdm=False)
        assert [r.index for r in rs] == [0, 1, 2, 3]
        assert rs[2].finish_reason == "error" and rs[2].error
        for r, (t, ims) in zip([rs[0], rs[1], rs[3]], good):
            self.check_greedy(r, reference(user_turn(t, ims, True), self.max_new_tokens), eos_ids, "good request")
