"""Video files to frames for InternVL, and the message that asks about them.

Needs the ``video`` extra (``pip install vlkit-plugin-internvl[video]``, which installs PyAV);
it is imported only when a video is read. Frames are sampled as in InternVL's and lmdeploy's
video example: ``num_segments`` segments of equal length over the (optionally bounded) clip,
one frame from the middle of each. Each frame is one tile (``max_dynamic_patch=1``) and is
introduced by ``Frame{i}: <IMAGE_TOKEN>\\n``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vlkit.plugin import IMAGE_TOKEN


class VideoSupportMissing(ImportError):
    """The ``video`` extra is not installed."""


def _av() -> Any:
    try:
        import av
    except ImportError as exc:
        raise VideoSupportMissing(
            "reading video needs PyAV: pip install 'vlkit-plugin-internvl[video]' (or pip install av)"
        ) from exc
    return av


def frame_indices(num_frames: int, fps: float, num_segments: int, bound: tuple[float, float] | None = None,
                  first: int = 0) -> list[int]:
    """Indices of the middle frame of ``num_segments`` equal segments of ``[start, end]`` seconds."""
    if num_segments < 1:
        raise ValueError(f"num_segments must be >= 1, got {num_segments}")
    start, end = bound if bound else (-100000.0, 100000.0)
    last = num_frames - 1
    start_idx = max(first, round(start * fps))
    end_idx = min(round(end * fps), last)
    seg = float(end_idx - start_idx) / num_segments
    return [int(start_idx + seg / 2 + round(seg * i)) for i in range(num_segments)]


def load_video_frames(path: str | Path, num_segments: int = 8, bound: tuple[float, float] | None = None) -> list[Any]:
    """``num_segments`` RGB PIL frames of the video at ``path`` (see :func:`frame_indices`).

    :raises VideoSupportMissing: without the ``video`` extra.
    :raises ValueError: for a file with no decodable video stream.
    """
    av = _av()
    try:
        container = av.open(str(path))
    except (OSError, getattr(av, "FFmpegError", OSError)) as exc:
        raise ValueError(f"cannot open video {str(path)!r}: {exc}") from exc
    with container:
        if not container.streams.video:
            raise ValueError(f"{str(path)!r} has no video stream")
        stream = container.streams.video[0]
        frames = [f.to_image().convert("RGB") for f in container.decode(stream)]
        rate = stream.average_rate or stream.guessed_rate or 1
        fps = float(rate)
    if not frames:
        raise ValueError(f"{str(path)!r} has no decodable frames")
    return [frames[min(i, len(frames) - 1)] for i in frame_indices(len(frames), fps, num_segments, bound)]


def video_prompt(num_frames: int, question: str) -> str:
    """``Frame1: <IMAGE_TOKEN>\\n...FrameN: <IMAGE_TOKEN>\\n`` + question."""
    return "".join(f"Frame{i + 1}: {IMAGE_TOKEN}\n" for i in range(num_frames)) + question


def video_messages(frames: list[Any], question: str, max_dynamic_patch: int = 1) -> list[dict[str, Any]]:
    """One OpenAI-style user message asking ``question`` about ``frames`` (one tile each)."""
    content: list[dict[str, Any]] = [{"type": "text", "text": video_prompt(len(frames), question)}]
    content += [{"type": "image", "image": f, "max_dynamic_patch": max_dynamic_patch} for f in frames]
    return [{"role": "user", "content": content}]
