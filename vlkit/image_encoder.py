"""Images to embeddings for a family's VisionModel: decode, preprocess, cache, batch.

Encoded features are cached by image content hash plus per-image options (LRU), so the same
image in a second chat turn or another request is not encoded again. Cache misses are encoded
in batches of up to ``VisionConfig.max_batch_size``.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from vlkit.config import VisionConfig
from vlkit.media import ImageLoadError, image_hash, load_image
from vlkit.messages import ImageRef
from vlkit.vision import ImageItem, VisionModel


@dataclass
class EncodedImage:
    item: ImageItem
    embedding: Any  # Tensor [num_tokens, hidden]


class ImageEncoder:
    def __init__(self, vision: VisionModel, config: VisionConfig) -> None:
        self.vision = vision
        self.config = config
        self._cache: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()
        self.stats = {"encoded": 0, "cache_hits": 0, "forward_calls": 0}

    def load(self, ref: ImageRef) -> Any:
        return load_image(ref.source, max_pixels=self.config.max_image_pixels, timeout=self.config.url_timeout)

    def preprocess(self, refs: list[ImageRef]) -> list[ImageItem]:
        """Decode and preprocess; raises :class:`vlkit.media.ImageLoadError` naming the bad image."""
        images = []
        for i, ref in enumerate(refs):
            try:
                images.append(self.load(ref))
            except ImageLoadError as exc:
                raise ImageLoadError(f"image {i}: {exc}") from exc
        items = self.vision.preprocess(images, [dict(r.options) for r in refs])
        for img, ref, item in zip(images, refs, items):
            opts = json.dumps(ref.options, sort_keys=True, default=str)
            item.hash = hashlib.blake2b(f"{image_hash(img)}|{opts}".encode(), digest_size=16).hexdigest()
        return items

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
        # the same image twice in one call is encoded once
        first: dict[str, int] = {}
        unique = []
        for i in todo:
            if items[i].hash not in first:
                first[items[i].hash] = i
                unique.append(i)
        bs = self.config.max_batch_size
        for start in range(0, len(unique), bs):
            chunk = unique[start:start + bs]
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
