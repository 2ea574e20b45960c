"""User-facing configuration objects.

The field names follow lmdeploy's (``GenerationConfig``, ``TurbomindEngineConfig`` /
``PytorchEngineConfig``, ``VisionConfig``, ``ChatTemplateConfig``) so that lmdeploy users feel
at home. This module must not import torch: ``import vlkit`` stays light.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any


@dataclass
class GenerationConfig:
    """How to generate the tokens of one request.

    ``do_sample=False`` (the default) is greedy decoding whatever the other sampling fields say;
    with ``do_sample=True`` the ``temperature``/``top_k``/``top_p``/``min_p`` filters apply in
    that order. ``random_seed`` makes sampling reproducible for that request alone, whatever
    else is in the batch. ``logprobs=N`` returns the top-N log-probabilities of each generated
    token.
    """

    max_new_tokens: int = 512
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    random_seed: int | None = None
    stop_words: list[str] | None = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    min_new_tokens: int = 0
    skip_special_tokens: bool = True
    logprobs: int | None = None

    def __post_init__(self) -> None:
        if self.max_new_tokens < 0:
            raise ValueError(f"GenerationConfig.max_new_tokens must be >= 0, got {self.max_new_tokens}")
        if self.min_new_tokens < 0:
            raise ValueError(f"GenerationConfig.min_new_tokens must be >= 0, got {self.min_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"GenerationConfig.temperature must be >= 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"GenerationConfig.top_p must be in (0, 1], got {self.top_p}")
        if not 0.0 <= self.min_p <= 1.0:
            raise ValueError(f"GenerationConfig.min_p must be in [0, 1], got {self.min_p}")
        if self.top_k < 0:
            raise ValueError(f"GenerationConfig.top_k must be >= 0, got {self.top_k}")
        if self.repetition_penalty <= 0:
            raise ValueError(
                f"GenerationConfig.repetition_penalty must be > 0, got {self.repetition_penalty}"
            )
        if self.logprobs is not None and self.logprobs < 0:
            raise ValueError(f"GenerationConfig.logprobs must be >= 0, got {self.logprobs}")

    @property
    def greedy(self) -> bool:
        """True when decoding picks the arg-max token."""
        return (not self.do_sample) or self.temperature == 0.0 or self.top_k == 1

    def replace(self, **changes: Any) -> GenerationConfig:
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# EngineConfig.quantization's values (vlkit.layers.quant.QUANT_METHODS; kept here: no torch import)
QUANTIZATION_METHODS = ("int8", "int4", "int4-asym")
# EngineConfig.attention_backend's values (vlkit.layers.attention.ATTENTION_BACKENDS)
ATTENTION_BACKENDS = ("auto", "sdpa", "triton", "flash-attn")


@dataclass
class EngineConfig:
    """How the engine runs.

    Args:
        tp: tensor-parallel degree; ``tp=N`` spawns ``N-1`` worker processes.
        session_len: longest sequence (prompt + generated) a request may reach; ``None`` takes
            the model's ``max_position_embeddings``, or its ``sliding_window`` where that is
            smaller (vlkit's attention is full; a longer ``session_len`` is refused).
        max_batch_size: most sequences in one step.
        max_prefill_token_num: token budget of one step (prefill chunks plus decodes).
        block_size: tokens per KV-cache block.
        cache_max_entry_count: fraction of free device memory (on CPU: of available RAM) given
            to the KV cache; ignored when ``num_blocks`` is set.
        num_blocks: explicit number of KV-cache blocks.
        enable_prefix_caching: reuse full KV blocks whose token (and image) hash chain matches.
        device: ``"auto"`` (CUDA if present, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:1"``...
        dtype: ``"auto"`` (bf16 on CUDA where supported, else fp32), ``"float32"``,
            ``"float16"``, ``"bfloat16"``.
        enforce_eager: never capture CUDA graphs (by default decode steps of up to
            ``cuda_graph_max_batch`` sequences replay graphs captured at start-up, on CUDA with a
            graph-safe attention backend: ``vlkit.engine.cuda_graph``).
        cuda_graph_max_batch: largest decode batch captured (also capped by ``max_batch_size``).
        attention_backend: decode attention over the paged cache: ``"auto"`` (flash-attn on CUDA
            where installed and ``block_size % 256 == 0``, else the Triton kernel on CUDA, else
            SDPA), ``"sdpa"``, ``"triton"`` or ``"flash-attn"`` (``vlkit.layers.attention``).
        num_threads: torch intra-op threads on CPU (``None``: torch's default).
        quantization: weight-only quantization of the language model's linear layers (QKV, O,
            gate/up, down) and LM head, round-to-nearest at load time on each tensor-parallel
            rank's shard (the input embedding stays dense, also when tied): ``None`` (off),
            ``"int8"`` (symmetric, one scale per output channel), ``"int4"`` (symmetric, one scale
            per group of ``quantization_group_size`` input channels) or ``"int4-asym"`` (group-wise
            scale and zero point). On CPU quantized layers run PyTorch's weight-only kernels with
            bf16 activations, so ``dtype`` float32/auto becomes bfloat16 for the whole language
            model (logged); elsewhere they dequantize and run a plain matmul.
        quantization_group_size: int4 group size (a power of two >= 32; 128 by default). A layer
            whose input size it does not divide uses the largest power of two below it that does;
            if that is under 32 the layer stays dense (bf16), and both cases are logged.
        nnodes: machines the ``tp`` ranks are spread over (evenly; this process is node 0 and
            runs the engine, the others run ``vlkit serve MODEL --tp N --nnodes M --node-rank K``);
            needs ``VLKIT_TP_SECRET`` set alike on every node (docs/scaling.md).
        master_addr: node 0's address as the other nodes reach it (the rendezvous binds there).
        master_port: the process group's rendezvous port on node 0; the control channel to the
            other nodes' ranks uses ``master_port + 1``.
        tp_backend: how ranks ``1..tp-1`` start: ``"process"`` (spawned on this machine, or
            with ``nnodes`` started by hand on the others) or ``"ray"`` (Ray actors, placed by
            Ray, in the current placement group where there is one: ``vlkit.engine.ray_ranks``).
    """

    tp: int = 1
    session_len: int | None = None
    max_batch_size: int = 128
    max_prefill_token_num: int = 4096
    block_size: int = 16
    cache_max_entry_count: float = 0.5
    num_blocks: int | None = None
    enable_prefix_caching: bool = True
    device: str = "auto"
    dtype: str = "auto"
    enforce_eager: bool = False
    cuda_graph_max_batch: int = 256
    attention_backend: str = "auto"
    num_threads: int | None = None
    quantization: str | None = None
    quantization_group_size: int = 128
    nnodes: int = 1
    master_addr: str = "127.0.0.1"
    master_port: int = 29500
    tp_backend: str = "process"

    def __post_init__(self) -> None:
        if self.tp < 1:
            raise ValueError(f"EngineConfig.tp must be >= 1, got {self.tp}")
        if self.nnodes < 1 or self.tp % self.nnodes:
            raise ValueError(f"EngineConfig.nnodes must be >= 1 and divide tp={self.tp}, got {self.nnodes}")
        if self.tp_backend not in ("process", "ray"):
            raise ValueError(f"EngineConfig.tp_backend must be 'process' or 'ray', got {self.tp_backend!r}")
        if self.tp_backend == "ray" and self.nnodes > 1:
            raise ValueError("EngineConfig.tp_backend='ray' places the ranks itself: leave nnodes at 1")
        if self.block_size < 1:
            raise ValueError(f"EngineConfig.block_size must be >= 1, got {self.block_size}")
        if self.max_batch_size < 1:
            raise ValueError(f"EngineConfig.max_batch_size must be >= 1, got {self.max_batch_size}")
        if self.max_prefill_token_num < 1:
            raise ValueError("EngineConfig.max_prefill_token_num must be >= 1")
        if not 0.0 < self.cache_max_entry_count <= 1.0:
            raise ValueError("EngineConfig.cache_max_entry_count must be in (0, 1]")
        if self.num_blocks is not None and self.num_blocks < 1:
            raise ValueError(f"EngineConfig.num_blocks must be >= 1, got {self.num_blocks}")
        if self.dtype not in ("auto", "float32", "float16", "bfloat16"):
            raise ValueError(
                f"EngineConfig.dtype must be auto/float32/float16/bfloat16, got {self.dtype!r}"
            )
        if self.attention_backend not in ATTENTION_BACKENDS:
            raise ValueError(f"EngineConfig.attention_backend must be one of {', '.join(ATTENTION_BACKENDS)}, "
                             f"got {self.attention_backend!r}")
        if self.cuda_graph_max_batch < 1:
            raise ValueError(f"EngineConfig.cuda_graph_max_batch must be >= 1, got {self.cuda_graph_max_batch}")
        if self.quantization is not None and self.quantization not in QUANTIZATION_METHODS:
            raise ValueError(
                f"EngineConfig.quantization must be one of {', '.join(QUANTIZATION_METHODS)} or None, "
                f"got {self.quantization!r}"
            )
        g = self.quantization_group_size
        if not isinstance(g, int) or g < 32 or g & (g - 1):
            raise ValueError(f"EngineConfig.quantization_group_size must be a power of two >= 32, got {g!r}")


@dataclass
class VisionConfig:
    """How images are encoded.

    Args:
        max_batch_size: most tiles the VisionModel encodes in one forward (an image counts as
            its ``ImageItem.num_tiles``: 1, or its crops for tiling families; an image with more
            tiles than this is encoded alone).
        feature_cache_size: encoded images kept, keyed by content hash (LRU); 0 disables.
        max_image_pixels: images with more pixels are refused (decompression bombs).
        url_timeout: seconds a whole http(s) image download may take (the Python API's
            default media policy; a server sets its own).
        media_workers: threads that fetch, decode and preprocess images, off the engine thread
            (at most this many images are in the works at once, across all requests).
        max_video_seconds: longer videos are refused.
        max_video_frames: videos with more frames (in the source, not the sample) are refused.
        max_video_frame_pixels: videos whose frames have more pixels are refused.
    """

    max_batch_size: int = 16
    feature_cache_size: int = 256
    max_image_pixels: int = 64_000_000
    url_timeout: float = 10.0
    media_workers: int = 4
    max_video_seconds: float = 600.0
    max_video_frames: int = 36_000
    max_video_frame_pixels: int = 16_000_000

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise ValueError(f"VisionConfig.max_batch_size must be >= 1, got {self.max_batch_size}")


@dataclass
class ChatTemplateConfig:
    """Selects and adjusts the chat template.

    Args:
        model_name: a template name (``vlkit list-models`` shows each family's); ``None``
            picks the family's default, then the checkpoint's own ``chat_template``.
        system: replaces the template's default system prompt.
        chat_template: a Jinja template string or a path to a ``.jinja`` file; wins over
            ``model_name``.
    """

    model_name: str | None = None
    system: str | None = None
    chat_template: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_option(cls, value: str | None) -> ChatTemplateConfig:
        """What ``--chat-template VALUE`` means: a ``.jinja`` path, else a template name."""
        if not value:
            return cls()
        return cls(chat_template=value) if value.endswith(".jinja") else cls(model_name=value)


# lmdeploy users write these names.
PytorchEngineConfig = EngineConfig
TurbomindEngineConfig = EngineConfig
