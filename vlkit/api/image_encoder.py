"""Images to embeddings for a family's VisionModel: decode, preprocess, cache, batch.

Encoded features are cached by image content hash plus per-image options (LRU), so the same
image in a second chat turn or another request is not encoded again. Cache misses are encoded
in batches of up to ``VisionConfig.max_batch_size`` tiles (an :class:`ImageItem` says how many it
has: ``num_tiles``).

Loading and preprocessing run off the engine thread, on a small pool of media threads
(``VisionConfig.media_workers``): fetching a URL, decoding a large PNG or resizing it never
pauses other requests' generation. A request's images are loaded and preprocessed one at a
time, so its peak memory tracks one decoded image, not all of them; the family's
``VisionModel.preprocess`` is called one image at a time, under a lock (so a plugin's
preprocessing never runs twice at once), while ``forward`` runs on the engine thread.

The same image *bytes* again (a chat client resends its history, base64 images included, every
turn) are not even decoded: a second, small LRU maps a hash of the source bytes plus options to
what preprocessing said about them (token count, template facts, content hash). Such an item
carries no pixels, only its ``source``; should its embeddings have left the cache by the time
it is encoded, it is preprocessed then.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from vlkit.api.fetch import MediaPolicy
from vlkit.api.media import (
    ImageLoadError,
    _check_pixels,
    _upright_rgb,
    decode_image_bytes,
    finish_decode,
    image_hash,
    open_image,
    read_image_bytes,
)
from vlkit.config import VisionConfig
from vlkit.contract.messages import ImageRef
from vlkit.contract.vision import ImageItem, VisionModel


@dataclass
class EncodedImage:
    item: ImageItem
    embedding: Any  # Tensor [num_tokens, hidden]


class ImageEncoder:
    def __init__(self, vision: VisionModel, config: VisionConfig) -> None:
        self.vision = vision
        self.config = config
        self._cache: OrderedDict[str, Any] = OrderedDict()
        # hash of source bytes + options -> (content hash, num_tokens, meta) of a preprocessed image
        self._by_source: OrderedDict[str, tuple[str, int, dict[str, Any]]] = OrderedDict()
        self._lock = threading.Lock()
        self._preprocess_lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self.stats = {"encoded": 0, "cache_hits": 0, "forward_calls": 0, "preprocessed": 0, "source_hits": 0}

    def default_policy(self) -> MediaPolicy:
        return MediaPolicy.trusted(self.config.url_timeout)

    def preprocess(self, refs: list[ImageRef], policy: MediaPolicy | None = None) -> list[ImageItem]:
        """Load and preprocess a request's images, one at a time, on the media threads.

        Call it from any thread but the engine's. Images whose bytes (and options) were
        preprocessed before and whose embeddings are in the cache come back without pixels,
        their ``source`` set (see the module docstring).

        :raises ImageLoadError: naming the bad image (index) and why, also for more images or
            more pixels in all than ``policy`` allows.
        """
        policy = policy or self.default_policy()
        if policy.max_images is not None and len(refs) > policy.max_images:
            raise ImageLoadError(f"the request has {len(refs)} images, over the limit of {policy.max_images} "
                                 "per request (--limit-mm-per-prompt)")
        budget = [policy.max_total_pixels]
        out = []
        seen = {"image": 0, "video": 0}
        for ref in refs:
            n = seen.get(ref.kind, 0)
            seen[ref.kind] = n + 1
            try:
                out.append(self._media_pool().submit(self._one, ref, policy, budget).result())
            except ImageLoadError as exc:
                raise type(exc)(f"{ref.kind} {n}: {exc}") from exc
        return out

    def _media_pool(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max(1, self.config.media_workers), thread_name_prefix="vlkit-media")
            return self._pool

    def _one(self, ref: ImageRef, policy: MediaPolicy, budget: list[int | None]) -> ImageItem:
        """One image: bytes (fetched within the policy), header and pixel checks, decode, then
        the family's preprocessing; on a media thread."""
        from PIL import Image

        opts = json.dumps(ref.options, sort_keys=True, default=str)
        if ref.kind == "video":
            return self._video(ref, policy, budget, opts)
        key = None
        if isinstance(ref.source, Image.Image):
            img = ref.source
            _check_pixels(img, self.config.max_image_pixels, img)
            _spend(budget, img.size)
            img = _upright_rgb(img)
        else:
            raw = read_image_bytes(ref.source, policy=policy)
            if self.config.feature_cache_size:
                key = hashlib.blake2b(raw + b"|" + opts.encode(), digest_size=16).hexdigest()
                known = self._known(key)
                if known is not None:
                    content, num_tokens, meta = known
                    self.stats["source_hits"] += 1
                    return ImageItem(num_tokens, {}, dict(ref.options), content, dict(meta), source=raw)
            header = open_image(raw, ref.source, max_pixels=self.config.max_image_pixels)
            _spend(budget, header.size)  # before the pixels are decoded
            img = finish_decode(header, ref.source)
            del raw
        with self._preprocess_lock:
            (item,) = self.vision.preprocess([img], [dict(ref.options)])
        self.stats["preprocessed"] += 1
        item.hash = hashlib.blake2b(f"{image_hash(img)}|{opts}".encode(), digest_size=16).hexdigest()
        self._remember(key, item)
        return item

    def _video(self, ref: ImageRef, policy: MediaPolicy, budget: list[int | None], opts: str) -> ImageItem:
        """One video: bytes (within the policy) decoded at the frames the family samples, or the
        user's frames as given; then the family's ``preprocess_video``."""
        from vlkit.api.video import VideoLimits, decode_video, frames_video, video_hash

        options = dict(ref.options)
        key = None
        if isinstance(ref.source, list):
            video = frames_video(ref.source, options.get("fps"), self.config.max_video_frame_pixels)
        else:
            raw = read_image_bytes(ref.source, policy=policy)
            if self.config.feature_cache_size:
                key = "video:" + hashlib.blake2b(raw + b"|" + opts.encode(), digest_size=16).hexdigest()
                known = self._known(key)
                if known is not None:
                    content, num_tokens, meta = known
                    self.stats["source_hits"] += 1
                    return ImageItem(num_tokens, {}, options, content, dict(meta), source=raw, kind="video")
            limits = VideoLimits(self.config.max_video_seconds, self.config.max_video_frames,
                                 self.config.max_video_frame_pixels)
            video = decode_video(raw, ref.source, lambda meta: self.vision.sample_video_frames(meta, options), limits)
            del raw
        for frame in video.frames:
            _spend(budget, frame.size)
        with self._preprocess_lock:
            item = self.vision.preprocess_video(video, dict(options))
        self.stats["preprocessed"] += 1
        item.kind = "video"
        item.hash = hashlib.blake2b(f"{video_hash(video)}|{opts}".encode(), digest_size=16).hexdigest()
        self._remember(key, item)
        return item

    def _remember(self, key: str | None, item: ImageItem) -> None:
        """What preprocessing said about the source bytes behind ``key`` (LRU)."""
        if key is None:
            return
        with self._lock:
            self._by_source[key] = (item.hash, item.num_tokens, dict(item.meta))
            while len(self._by_source) > self.config.feature_cache_size:
                self._by_source.popitem(last=False)

    def _known(self, key: str) -> tuple[str, int, dict[str, Any]] | None:
        """What preprocessing said about these source bytes, while their embeddings are cached."""
        with self._lock:
            known = self._by_source.get(key)
            if known is None or known[0] not in self._cache:
                return None
            self._by_source.move_to_end(key)
            return known

    def _reprocess(self, item: ImageItem) -> ImageItem:
        """An item that came from the source cache, whose embeddings have since left the cache."""
        if item.kind == "video":
            full = self._video(ImageRef(item.source, dict(item.options), kind="video"), MediaPolicy.trusted(),
                               [None], json.dumps(item.options, sort_keys=True, default=str))
            full.hash = item.hash
            return full
        img = decode_image_bytes(item.source, max_pixels=self.config.max_image_pixels)
        with self._preprocess_lock:
            (full,) = self.vision.preprocess([img], [dict(item.options)])
        self.stats["preprocessed"] += 1
        full.hash = item.hash
        return full

    def encode(self, items: list[ImageItem]) -> list[Any]:
        """Embeddings for items, from the cache where possible, the rest in batches."""
        out: list[Any] = [None] * len(items)
        todo: list[int] = []
        with self._lock:
            for i, item in enumerate(items):
                hit = self._cache.get(item.hash) if self.config.feature_cache_size else None
                if hit is not None:
                    self._cache.move_to_end(item.hash)
                    out[i] = hit
                    self.stats["cache_hits"] += 1
                else:
                    todo.append(i)
        items = list(items)
        for i in todo:
            if items[i].source is not None and not items[i].data:  # its embeddings left the cache
                items[i] = self._reprocess(items[i])
        # the same image twice in one call is encoded once
        first: dict[str, int] = {}
        unique = []
        for i in todo:
            if items[i].hash not in first:
                first[items[i].hash] = i
                unique.append(i)
        for chunk in _batches(unique, [max(1, items[i].num_tiles) for i in unique], self.config.max_batch_size):
            feats = self.vision.forward([items[i] for i in chunk])
            self.stats["forward_calls"] += 1
            self.stats["encoded"] += len(chunk)
            for i, f in zip(chunk, feats):
                if f.shape[0] != items[i].num_tokens:
                    raise RuntimeError(
                        f"{type(self.vision).__name__}.forward returned {f.shape[0]} embeddings for an image "
                        f"whose preprocess said num_tokens={items[i].num_tokens}"
                    )
                out[i] = f
        for i in todo:
            out[i] = out[first[items[i].hash]]
        if self.config.feature_cache_size:
            with self._lock:
                for i in unique:
                    self._cache[items[i].hash] = out[i]
                    self._cache.move_to_end(items[i].hash)
                while len(self._cache) > self.config.feature_cache_size:
                    self._cache.popitem(last=False)
        return out

    def clear(self) -> None:
        with self._lock:
            self._cache.clear()
            self._by_source.clear()

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)


def _spend(budget: list[int | None], size: tuple[int, int]) -> None:
    """Take ``size``'s pixels from a request's pixel budget (``[None]``: no limit)."""
    if budget[0] is None:
        return
    need = int(size[0]) * int(size[1])
    if need > budget[0]:
        raise ImageLoadError(f"the request's images exceed its budget of pixels in all (--max-pixels-per-request); "
                             f"this one has {size[0]}x{size[1]}, {budget[0]} were left")
    budget[0] -= need


def _batches(indices: list[int], costs: list[int], budget: int) -> list[list[int]]:
    """Consecutive groups whose tiles add up to at most ``budget`` (an image with more tiles
    than that goes alone)."""
    out: list[list[int]] = []
    cur: list[int] = []
    used = 0
    for i, c in zip(indices, costs):
        if cur and used + c > budget:
            out.append(cur)
            cur, used = [], 0
        cur.append(i)
        used += c
    if cur:
        out.append(cur)
    return out
