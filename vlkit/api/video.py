"""Videos: decoded with PyAV (the ``video`` extra), sampled as the family asks, within limits.

A video reaches a family's :meth:`~vlkit.contract.vision.VisionModel.preprocess_video` as a
:class:`Video`: the sampled frames (upright RGB PIL images), which source frames they are, and
the rate they stand for. Which frames to keep is the family's choice
(:meth:`~vlkit.contract.vision.VisionModel.sample_video_frames`: Qwen2-VL samples 2 fps,
InternVL 8 segments); decoding keeps only those, so memory holds the sampled frames, never the
whole video. A list of PIL frames given by the user is taken as it is (no sampling); the
part's ``fps`` option says their rate.

Limits (:class:`VideoLimits`, from :class:`~vlkit.config.VisionConfig`): the duration, the number
of frames decoded, and each frame's pixels, checked from the container's header before decoding
where it says them, and while decoding in any case. Bytes that are not a video fail with a
:class:`VideoLoadError` (an :class:`~vlkit.api.fetch.ImageLoadError`, so the server answers 400).
This runs on the media threads, off the engine thread.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from vlkit.api.fetch import ImageLoadError

__all__ = ["Video", "VideoLimits", "VideoLoadError", "VideoMetadata", "VideoSupportMissing", "decode_video",
           "frames_video", "video_hash"]


class VideoLoadError(ImageLoadError):
    """A video that cannot be used: not a video, undecodable, or over a limit."""


class VideoSupportMissing(VideoLoadError):
    """PyAV (the ``video`` extra) is not installed."""


@dataclass(frozen=True)
class VideoLimits:
    """What a video may cost: seconds, frames decoded, pixels per frame."""

    max_seconds: float = 600.0
    max_frames: int = 36_000
    max_frame_pixels: int = 16_000_000


@dataclass(frozen=True)
class VideoMetadata:
    """What the container says of a video's stream, before any frame is sampled."""

    total_frames: int
    fps: float | None
    width: int
    height: int

    @property
    def duration(self) -> float | None:
        return self.total_frames / self.fps if self.fps else None


@dataclass
class Video:
    """Sampled frames of a video.

    Args:
        frames: upright RGB PIL images, in time order.
        indices: for each frame, its index among the source's frames.
        fps: the source's frame rate (``None`` when unknown: frames given without ``fps``).
        total_frames: frames in the source.
    """

    frames: list[Any]
    indices: list[int]
    fps: float | None
    total_frames: int

    @property
    def sample_fps(self) -> float | None:
        """Frames per second of the sampled frames (what Qwen2.5-VL's time positions use)."""
        if not self.fps or not self.total_frames:
            return self.fps
        return self.fps * len(self.frames) / self.total_frames

    @property
    def metadata(self) -> VideoMetadata:
        w, h = self.frames[0].size if self.frames else (0, 0)
        return VideoMetadata(self.total_frames, self.fps, w, h)


def _av() -> Any:
    try:
        import av
    except ImportError as exc:
        raise VideoSupportMissing("reading a video file needs PyAV: pip install 'vlkit[video]' (or pip install av); "
                                  "a list of PIL frames works without it") from exc
    return av


def _describe(source: Any) -> str:
    if isinstance(source, (bytes, bytearray)):
        return f"<{len(source)} bytes>"
    s = str(source)
    return s[:40] + "..." if s.startswith("data:") else (s if len(s) < 200 else s[:200] + "...")


def decode_video(data: bytes, source: Any, sample: Callable[[VideoMetadata], list[int]],
                 limits: VideoLimits | None = None) -> Video:
    """Decode the frames ``sample(metadata)`` picks from the video in ``data``.

    :param source: what the bytes came from (named in errors).
    :param sample: the family's choice of frame indices, given the stream's metadata.
    :raises VideoLoadError: for bytes that are not a video, an undecodable stream, a video over
        ``limits`` or a choice of frames the video does not have.
    """
    av = _av()
    limits = limits or VideoLimits()
    what = _describe(source)
    try:
        container = av.open(io.BytesIO(data), mode="r")
    except Exception as exc:  # av.error.InvalidDataError and kin
        raise VideoLoadError(f"{what} is not a video PyAV can read: {type(exc).__name__}: {exc}") from exc
    with container:
        fmt = getattr(container.format, "name", "") or ""
        if fmt.endswith("_pipe") or fmt == "image2":  # ffmpeg reads a still image as a one-frame video
            raise VideoLoadError(f"{what} is not a video but a still image ({fmt[:-5] if fmt.endswith('_pipe') else fmt}); "
                                 "send it as an image part")
        if not container.streams.video:
            raise VideoLoadError(f"{what} has no video stream")
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        fps = float(rate) if rate else None
        width, height = int(stream.codec_context.width or 0), int(stream.codec_context.height or 0)
        if width * height > limits.max_frame_pixels:
            raise VideoLoadError(f"{what}: frames of {width}x{height} pixels are over the limit of "
                                 f"{limits.max_frame_pixels} (VisionConfig.max_video_frame_pixels)")
        total = int(stream.frames or 0)
        seconds = None
        if stream.duration is not None and stream.time_base is not None:
            seconds = float(stream.duration * stream.time_base)
        elif container.duration:
            seconds = container.duration / 1_000_000
        _check_length(what, total, seconds, fps, limits)
        if total <= 0:  # the header does not say: count the frames (decoding them, keeping none)
            total = sum(1 for _ in _frames(container, stream, what, limits))
            container.seek(0)
            _check_length(what, total, None, fps, limits)
        if total <= 0:
            raise VideoLoadError(f"{what} has no decodable frames")
        meta = VideoMetadata(total, fps, width, height)
        wanted = sorted({int(i) for i in sample(meta)})
        if not wanted:
            raise VideoLoadError(f"{what}: no frames were chosen from its {total}")
        if wanted[0] < 0 or wanted[-1] >= total:
            raise VideoLoadError(f"{what}: frame {wanted[-1]} was asked of a video of {total} frames")
        keep = set(wanted)
        frames: dict[int, Any] = {}
        last = None
        for i, frame in enumerate(_frames(container, stream, what, limits)):
            last = frame
            if i in keep:
                frames[i] = frame.to_image().convert("RGB")
                if len(frames) == len(keep):
                    break
    if len(frames) < len(keep):
        # the header over-counted: the missing tail frames repeat the last decoded one
        if last is None:
            raise VideoLoadError(f"{what} has no decodable frames")
        tail = last.to_image().convert("RGB")
        for i in keep - set(frames):
            frames[i] = tail
    return Video([frames[i] for i in wanted], wanted, fps, total)


def _check_length(what: str, total: int, seconds: float | None, fps: float | None, limits: VideoLimits) -> None:
    if total > limits.max_frames:
        raise VideoLoadError(f"{what} has {total} frames, over the limit of {limits.max_frames} "
                             "(VisionConfig.max_video_frames)")
    if seconds is None and total and fps:
        seconds = total / fps
    if seconds is not None and seconds > limits.max_seconds:
        raise VideoLoadError(f"{what} lasts {seconds:.1f} s, over the limit of {limits.max_seconds:g} s "
                             "(VisionConfig.max_video_seconds)")


def _frames(container: Any, stream: Any, what: str, limits: VideoLimits) -> Any:
    n = 0
    try:
        for frame in container.decode(stream):
            n += 1
            if n > limits.max_frames:
                raise VideoLoadError(f"{what} has more than {limits.max_frames} frames "
                                     "(VisionConfig.max_video_frames)")
            yield frame
    except VideoLoadError:
        raise
    except Exception as exc:
        raise VideoLoadError(f"cannot decode video {what}: {type(exc).__name__}: {exc}") from exc


def frames_video(frames: list[Any], fps: Any = None, max_pixels: int | None = None) -> Video:
    """A video the user gave as PIL frames: taken as given, each upright RGB."""
    from vlkit.api.media import _check_pixels, _upright_rgb

    if fps is not None and (isinstance(fps, bool) or not isinstance(fps, (int, float)) or fps <= 0):
        raise VideoLoadError(f"a video's fps must be a positive number, got {fps!r}")
    out = []
    for i, f in enumerate(frames):
        if max_pixels is not None:
            try:
                _check_pixels(f, max_pixels, f"frame {i}")
            except ImageLoadError as exc:
                raise VideoLoadError(str(exc)) from exc
        out.append(_upright_rgb(f))
    return Video(out, list(range(len(out))), float(fps) if fps else None, len(out))


def video_hash(video: Video) -> str:
    """Content hash of sampled frames and their timing, for caches."""
    from vlkit.api.media import image_hash

    h = hashlib.blake2b(digest_size=16)
    h.update(f"video:{video.fps}:{video.total_frames}:{video.indices}:".encode())
    for f in video.frames:
        h.update(image_hash(f).encode())
    return h.hexdigest()
