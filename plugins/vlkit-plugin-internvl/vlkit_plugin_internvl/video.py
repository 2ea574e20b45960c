"""InternVL's video frame sampling (``load_video``'s ``get_index`` in InternVL's and lmdeploy's
video examples): ``num_segments`` segments of equal length over the (optionally bounded) clip,
one frame from the middle of each.

Videos reach the plugin as ``{"type": "video", "video": ...}`` parts (decoded by the core with
PyAV, the ``vlkit[video]`` extra); :meth:`InternVLVisionModel.sample_video_frames` picks the
frames with :func:`frame_indices`, and each frame is one tile (``max_dynamic_patch=1``)
introduced by ``Frame{i}: `` in the prompt.
"""

from __future__ import annotations


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
