"""The VisionModel base class: what a family implements to turn images into embeddings.

The core calls, in order: ``build_preprocessor()``, ``build_model()`` (once each), then for
every batch of images ``preprocess()`` and ``forward()``. A VisionModel holds only the vision
tower and the projector, never the whole VLM: the language model lives in the engine.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from vlkit.api.video import Video, VideoMetadata
    from vlkit.contract.family import ModelFamily


@dataclass
class ImageItem:
    """One preprocessed image.

    Args:
        num_tokens: how many prompt positions this image's embeddings fill.
        data: whatever ``forward`` needs (pixel values, grid sizes, ...).
        options: the per-image options the user gave (``max_pixels``...).
        hash: content hash of the decoded image plus options (cache key; set by the core).
        meta: facts the chat template wrapper may need (e.g. Qwen2-VL's grid, tile counts);
            the wrapper's ``image_text(index, num_tokens, meta)`` receives it.
        num_tiles: how many crops ``forward`` encodes for this image (1 unless the family tiles
            images); ``VisionConfig.max_batch_size`` counts these.
        source: set by the core (never by a plugin) on an item it did not preprocess because
            the same image bytes were seen before and their embeddings are cached; ``data`` is
            then empty, and ``source`` is what to preprocess should the cache have let them go.
        kind: ``"image"`` or ``"video"`` (set by the core).
    """

    num_tokens: int
    data: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    hash: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    source: Any = None
    num_tiles: int = 1
    kind: str = "image"


class VisionModel(ABC):
    """Base class of a family's vision side (tower + projector).

    Subclasses implement :meth:`build_preprocessor`, :meth:`build_model`, :meth:`preprocess`
    and :meth:`forward`; :meth:`mrope_positions` only for families with 3-D rotary positions.

    Video: a family that takes video sets :attr:`video_input` (``"native"``: the model has its
    own video path, as Qwen2-VL's temporal patches; ``"frames"``: the video is a sequence of
    frames, as InternVL's) and implements :meth:`sample_video_frames` and
    :meth:`preprocess_video`; the item it returns goes through :meth:`forward` like an image's.
    With ``video_input = None`` (the default) a video part is refused with a ``MessageError``
    naming the family, before anything is fetched.

    Threads: the core creates it on the pipeline's creating thread (the ``vlkit_vision_model``
    hook) and calls ``build_preprocessor``, ``build_model`` and ``forward`` on the pipeline's
    engine thread. ``preprocess`` runs on a media thread, off the engine thread (so that a large
    image never pauses generation), with one image per call and one call at a time; it may run
    while ``forward`` runs on the engine thread, so it must not touch the model.

    Args:
        family: the matched :class:`~vlkit.contract.family.ModelFamily`.
        hf_config: the checkpoint's ``config.json``.
        model_path: local checkpoint directory.
        tokenizer: the checkpoint's tokenizer (for families whose image inputs hold token ids).
    """

    #: how the family takes video: ``"native"``, ``"frames"`` or ``None`` (not at all)
    video_input: ClassVar[str | None] = None

    def __init__(self, family: ModelFamily, hf_config: dict[str, Any], model_path: Path, tokenizer: Any = None) -> None:
        self.family = family
        self.hf_config = hf_config
        self.model_path = Path(model_path)
        self.tokenizer = tokenizer
        self.device: Any = "cpu"
        self.dtype: Any = None
        self.preprocessor: Any = None
        self.model: Any = None

    def to(self, device: Any, dtype: Any) -> VisionModel:
        """Where ``build_model`` should put the weights (set by the core before building)."""
        self.device, self.dtype = device, dtype
        return self

    @abstractmethod
    def build_preprocessor(self) -> Any:
        """Create and return the image preprocessor (prefer the family's transformers one)."""

    @abstractmethod
    def build_model(self) -> Any:
        """Create the vision tower and projector and load their weights from ``model_path``.

        Build on ``accelerate.init_empty_weights()`` and load only the vision tensors; never
        instantiate the whole VLM. Return the module (also kept as ``self.model``).
        """

    @abstractmethod
    def preprocess(self, images: list[Any], options: list[dict[str, Any]]) -> list[ImageItem]:
        """Turn decoded RGB PIL images into :class:`ImageItem` s.

        :param images: upright RGB ``PIL.Image`` s.
        :param options: one dict of per-image options per image (may be empty).
        :return: one item per image, each with its ``num_tokens``.
        :raises ValueError: for options the family does not accept, naming them.
        """

    @abstractmethod
    def forward(self, items: list[ImageItem]) -> list[torch.Tensor]:
        """Encode a batch of items.

        :return: one ``[item.num_tokens, lm_hidden_size]`` tensor per item, in order.
        """

    def sample_video_frames(self, metadata: VideoMetadata, options: dict[str, Any]) -> list[int]:
        """Which frames of a video file to decode: indices into its ``metadata.total_frames``,
        following the family's reference sampling and the part's ``options`` (``fps``,
        ``num_frames``...). Runs on a media thread, before any frame is decoded.

        :raises ValueError: for options the family does not accept, naming them.
        """
        raise NotImplementedError(f"{type(self).__name__} sets video_input but not sample_video_frames")

    def preprocess_video(self, video: Video, options: dict[str, Any]) -> ImageItem:
        """Turn a video's frames (:class:`~vlkit.api.video.Video`: upright RGB frames, their
        source indices and rate) into one :class:`ImageItem`, as :meth:`preprocess` does for an
        image; ``meta`` should say it is a video where the chat template writes videos
        differently. Same thread rules as :meth:`preprocess`."""
        raise NotImplementedError(f"{type(self).__name__} sets video_input but not preprocess_video")

    def mrope_positions(self, input_ids: list[int], items: list[ImageItem]) -> tuple[Any, int] | None:
        """3-D rotary positions ``([3, len(input_ids)] LongTensor, decode_delta)``, or ``None``.

        Only families with multimodal rotary embeddings (Qwen2-VL) override this.
        """
        return None

    def prompt_too_long(self, input_ids: list[int], items: list[ImageItem], session_len: int) -> str | None:
        """A message refusing a prompt that cannot fit ``session_len``, with the family's advice
        (e.g. Qwen2-VL: "lower max_pixels"), or ``None`` to let the engine's generic check apply."""
        return None

    def load_weights(
        self,
        module: Any,
        tensors: dict[str, Any],
        *,
        error: type[Exception] = ValueError,
        name_of: Any = None,
        what: str = "vision weights",
        limit: int = 5,
        strict: bool = False,
    ) -> Any:
        """Load ``tensors`` into ``module`` (built under ``accelerate.init_empty_weights()``) on
        :attr:`device` / :attr:`dtype`, after checking that every parameter and buffer of the
        module has a tensor of its shape; returns the module in eval mode, without gradients.

        :param error: the exception class to raise; its message names the first ``limit``
            missing tensors and the first misshaped ones with expected and actual shapes. A
            :class:`~vlkit.layers.weights.WeightLoadError` (or subclass) gets them as its
            ``missing`` / ``misshaped`` lists; any other class gets the message alone.
        :param name_of: maps a module key to the name a user would find in the checkpoint.
        :param what: how the message calls these tensors.
        :param strict: tensors of ``tensors`` the module has no place for are an error too
            (reported as ``unexpected`` by a :class:`~vlkit.layers.weights.WeightLoadError`).
        """
        import torch

        from vlkit.layers.weights import WeightLoadError

        name = name_of or (lambda k: k)
        expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
        missing = [k for k in expected if k not in tensors]
        wrong = [(k, s, tuple(tensors[k].shape)) for k, s in expected.items()
                 if k in tensors and tuple(tensors[k].shape) != s]
        extra = sorted(name(k) for k in tensors if k not in expected) if strict else []
        if (missing or wrong or extra) and isinstance(error, type) and issubclass(error, WeightLoadError):
            raise error(f"the {what} in {self.model_path}", [(name(k), expected[k]) for k in missing],
                        [(name(k), s, g) for k, s, g in wrong], unexpected=extra)
        if extra and not (missing or wrong):
            raise error(f"{what} of {self.model_path} do not fit: {len(extra)} unexpected tensor(s): "
                        + ", ".join(extra[:limit]))
        if missing or wrong:
            parts = []
            if missing:
                parts.append(f"missing {len(missing)} tensor(s): {', '.join(name(k) for k in missing[:limit])}")
            if wrong:
                parts.append("wrong shape: " + "; ".join(
                    f"{name(k)} expected {s}, got {g}" for k, s, g in wrong[:limit]))
            raise error(f"{what} of {self.model_path} do not fit: " + "; ".join(parts))
        dtype = self.dtype or torch.float32
        module.load_state_dict({k: tensors[k].to(device=self.device, dtype=dtype if tensors[k].is_floating_point() else None)
                                for k in expected}, assign=True)
        module.requires_grad_(False)
        return module.eval()

    def close(self) -> None:
        self.model = None
