"""Images to embeddings for a family's VisionModel: decode, preprocess, cache, batch.

Encoded features are cached by image content hash plus per-image options (LRU), so the same
image in a second chat turn or another request is not encoded again. Cache misses are encoded
in batches of up to ``VisionConfig.max_batch_size`` tiles (an :class:`ImageItem` says how many it
has: ``num_tiles``).

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
from dataclasses import dataclass
from typing import Any

from vlkit.api.media import ImageLoadError, decode_image_bytes, image_hash, load_image, read_image_bytes
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
        self.stats = {"encoded": 0, "cache_hits": 0, "forward_calls": 0, "preprocessed": 0, "source_hits": 0}

    def load(self, ref: ImageRef) -> Any:
        return load_image(ref.source, max_pixels=self.config.max_image_pixels, timeout=self.config.url_timeout)

    def preprocess(self, refs: list[ImageRef]) -> list[ImageItem]:
        """Decode and preprocess; raises :class:`vlkit.api.media.ImageLoadError` naming the bad image.

        Images whose bytes (and options) were preprocessed before and whose embeddings are in
        the cache come back without pixels, their ``source`` set (see the module docstring).
        """
        from PIL import Image

        out: list[ImageItem | None] = [None] * len(refs)
        todo: list[tuple[int, Any, str, str | None]] = []  # (index, decoded image, options JSON, source key)
        for i, ref in enumerate(refs):
            opts = json.dumps(ref.options, sort_keys=True, default=str)
            try:
                if isinstance(ref.source, Image.Image) or not self.config.feature_cache_size:
                    todo.append((i, self.load(ref), opts, None))
                    continue
                raw = read_image_bytes(ref.source, self.config.url_timeout)
                key = hashlib.blake2b(raw + b"|" + opts.encode(), digest_size=16).hexdigest()
                known = self._known(key)
                if known is not None:
                    content, num_tokens, meta = known
                    out[i] = ImageItem(num_tokens, {}, dict(ref.options), content, dict(meta), source=raw)
                    self.stats["source_hits"] += 1
                    continue
                todo.append((i, decode_image_bytes(raw, ref.source, max_pixels=self.config.max_image_pixels), opts, key))
            except ImageLoadError as exc:
                raise ImageLoadError(f"image {i}: {exc}") from exc
        if todo:
            items = self.vision.preprocess([t[1] for t in todo], [dict(refs[t[0]].options) for t in todo])
            self.stats["preprocessed"] += len(items)
            for (i, img, opts, key), item in zip(todo, items):
                item.hash = hashlib.blake2b(f"{image_hash(img)}|{opts}".encode(), digest_size=16).hexdigest()
                out[i] = item
                if key is not None:
                    with self._lock:
                        self._by_source[key] = (item.hash, item.num_tokens, dict(item.meta))
                        while len(self._by_source) > self.config.feature_cache_size:
                            self._by_source.popitem(last=False)
        return [it for it in out if it is not None]

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
        img = decode_image_bytes(item.source, max_pixels=self.config.max_image_pixels)
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
