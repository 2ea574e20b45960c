"""Checkpoint reading: safetensors or ``.bin``, single or sharded, mapped to backbone names.

- :func:`iter_checkpoint_tensors` yields ``(name, tensor)`` from a directory holding
  ``model.safetensors``, ``model.safetensors.index.json`` + shards, ``pytorch_model.bin`` or
  ``pytorch_model.bin.index.json`` + shards (``torch.load(weights_only=True)``).
- :func:`load_backbone` builds the backbone a :class:`LanguageModelSpec` names and loads its
  weights through ``spec.rename``; each parallel layer slices its tensor-parallel shard as it
  copies. Missing or misshaped tensors raise :class:`WeightLoadError` naming them.
- :func:`text_model_spec` builds the spec of a plain text checkpoint from its ``config.json``.
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # keep torch out of module import for cheap spec building
    import torch

    from vlkit.models.base import LanguageBackbone
    from vlkit.models.spec import LanguageModelSpec


_INDEXES = (("safetensors", "model.safetensors.index.json"), ("bin", "pytorch_model.bin.index.json"))
_SINGLES = (("safetensors", "model.safetensors"), ("bin", "pytorch_model.bin"))


def weight_index(model_path: str | os.PathLike[str]) -> tuple[str, dict[str, list[str]] | None, list[str]]:
    """``(kind, {shard file name: [tensor names]} or None, [files])`` of the weights in a directory.

    ``kind`` is ``"safetensors"`` or ``"bin"``; the name map comes from the shard index when
    there is one (``None`` for unindexed files).
    """
    model_path = os.fspath(model_path)
    for kind, name in _INDEXES:
        index_path = os.path.join(model_path, name)
        if os.path.isfile(index_path):
            with open(index_path) as f:
                weight_map: dict[str, str] = json.load(f)["weight_map"]
            by_file: dict[str, list[str]] = {}
            for tensor, file in weight_map.items():
                by_file.setdefault(file, []).append(tensor)
            return kind, by_file, [os.path.join(model_path, s) for s in sorted(by_file)]
    for kind, name in _SINGLES:
        if os.path.isfile(os.path.join(model_path, name)):
            return kind, None, [os.path.join(model_path, name)]
    found = sorted(glob.glob(os.path.join(model_path, "*.safetensors")))
    if found:
        return "safetensors", None, found
    found = sorted(glob.glob(os.path.join(model_path, "*.bin")))
    found = [f for f in found if not os.path.basename(f).startswith("training_args")]
    if found:
        return "bin", None, found
    raise FileNotFoundError(f"no safetensors or pytorch_model.bin weights in {model_path}")


def checkpoint_files(model_path: str) -> tuple[str, list[str]]:
    """``("safetensors" | "bin", [files])`` of the weights in ``model_path``."""
    kind, _, files = weight_index(model_path)
    return kind, files


def load_bin(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """A ``.bin`` state dict (``weights_only``), memory-mapped when its format allows."""
    import torch

    try:
        return torch.load(os.fspath(path), map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # legacy (non-zip) serialization cannot be memory-mapped
        return torch.load(os.fspath(path), map_location="cpu", weights_only=True)


def iter_checkpoint_tensors(model_path: str) -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor of the checkpoint in ``model_path``, shard by shard."""
    kind, files = checkpoint_files(model_path)
    for path in files:
        if kind == "safetensors":
            from safetensors import safe_open

            with safe_open(path, framework="pt", device="cpu") as f:
                for name in f.keys():
                    yield name, f.get_tensor(name)
        else:
            state = load_bin(path)
            yield from state.items()
            del state


def tensor_names(model_path: str | os.PathLike[str]) -> list[str]:
    """Every tensor name of a checkpoint (only the index or the safetensors headers are read)."""
    kind, by_file, files = weight_index(model_path)
    if by_file is not None:
        return [n for names in by_file.values() for n in names]
    names: list[str] = []
    for path in files:
        if kind == "safetensors":
            from safetensors import safe_open

            with safe_open(path, framework="pt", device="cpu") as f:
                names.extend(f.keys())
        else:
            names.extend(load_bin(path).keys())
    return names


def tensor_shapes(model_path: str | os.PathLike[str], select: Callable[[str], bool]) -> dict[str, tuple[int, ...]]:
    """Shapes of the tensors ``select`` picks, from the safetensors headers (``.bin``: loaded)."""
    kind, _, files = weight_index(model_path)
    out: dict[str, tuple[int, ...]] = {}
    for path in files:
        if kind == "safetensors":
            from safetensors import safe_open

            with safe_open(path, framework="pt", device="cpu") as f:
                for name in f.keys():
                    if select(name):
                        out[name] = tuple(f.get_slice(name).get_shape())
        else:
            out.update({n: tuple(t.shape) for n, t in load_bin(path).items() if select(n)})
    return out


def stored_float_dtypes(model_path: str | os.PathLike[str], select: Callable[[str], bool] = lambda n: True) -> set[str]:
    """The safetensors dtypes (``"BF16"``, ``"F16"``, ``"F32"``...) of the floating-point tensors
    ``select`` picks, read from the headers only; empty for ``.bin`` checkpoints."""
    kind, _, files = weight_index(model_path)
    out: set[str] = set()
    if kind != "safetensors":
        return out
    from safetensors import safe_open

    for path in files:
        with safe_open(path, framework="pt", device="cpu") as f:
            for name in f.keys():
                if select(name):
                    dt = f.get_slice(name).get_dtype()
                    if dt.startswith(("F", "BF")):
                        out.add(dt)
    return out


def read_tensors(
    model_path: str | os.PathLike[str], select: Callable[[str], str | bool | None]
) -> dict[str, torch.Tensor]:
    """The tensors ``select`` picks, for a family's vision tower and projector.

    ``select(name)`` returns the name to store the tensor under, ``True`` to keep its name, or
    ``None``/``False`` to skip it. With a shard index only shards holding a selected tensor are
    opened, and safetensors are read tensor by tensor: the language model is never loaded.
    """

    def pick(name: str) -> str | None:
        new = select(name)
        if new is True:
            return name
        return new or None

    kind, by_file, files = weight_index(model_path)
    out: dict[str, Any] = {}
    for path in files:
        if by_file is not None and not any(pick(n) for n in by_file[os.path.basename(path)]):
            continue
        if kind == "safetensors":
            from safetensors import safe_open

            with safe_open(path, framework="pt", device="cpu") as f:
                for name in f.keys():
                    new = pick(name)
                    if new is not None:
                        out[new] = f.get_tensor(name)
        else:
            state = load_bin(path)
            for name, tensor in state.items():
                new = pick(name)
                if new is not None:
                    out[new] = tensor
            del state
    return out



@contextmanager
def _default_dtype(dtype):
    import torch

    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def load_backbone(spec: LanguageModelSpec, device: Any = "cpu", dtype: Any = None,
                  prepare: Callable[[Any], None] | None = None,
                  transform: Callable[[Iterator[tuple[str, Any]]], Iterator[tuple[str, Any]]] | None = None,
                  ) -> LanguageBackbone:
    """Build ``spec.architecture``'s backbone on ``device`` in ``dtype`` and load its weights.

    Under tensor parallelism call it on every rank after :func:`vlkit.layers.tp.init_tp`:
    each rank keeps its own slice. ``prepare(model)`` runs between building and loading and
    ``transform`` rewrites the checkpoint's ``(name, tensor)`` stream before names are mapped
    (both for pre-quantized checkpoints: :mod:`vlkit.layers.prequant`).
    """
    import torch

    from vlkit.layers.weights import WeightLoadError
    from vlkit.models.backbones import get_backbone_class

    cls = get_backbone_class(spec.architecture, spec.backbone)
    dtype = dtype or torch.float32
    with torch.device(device), _default_dtype(dtype):
        model = cls(dict(spec.config))
    if prepare is not None:
        prepare(model)
    skipped: list[str] = []
    renamed: list[str] = []

    def weights() -> Iterator[tuple[str, torch.Tensor]]:
        stream = iter_checkpoint_tensors(spec.model_path)
        for name, tensor in (transform(stream) if transform else stream):
            new = spec.rename(name)
            if new is None:
                skipped.append(name)
                continue
            renamed.append(new)
            yield new, tensor

    try:
        model.load_weights(weights())
    except WeightLoadError as exc:
        n_params = sum(len(getattr(p, "shard_ids", (None,))) for _, p in model.named_parameters())
        if renamed and len(exc.missing) < n_params:
            raise  # some tensors loaded: the message's list is the story
        hint = _mapping_hint(spec, skipped[:4], renamed[:4])
        raise WeightLoadError(type(model).__name__, exc.missing, exc.misshaped, hint=hint) from None
    return model.eval()


def _mapping_hint(spec: LanguageModelSpec, skipped: list[str], renamed: list[str]) -> str:
    """Why no parameter got a tensor: the spec's prefixes matched nothing, or renamed to names
    the backbone does not have."""
    pairs = ", ".join(f"{src!r} -> {dst!r}" for src, dst in spec.weight_prefixes) or "none"
    if not renamed:
        return (f"No tensor of {spec.model_path} matched the spec's weight_prefixes ({pairs}); its tensors are "
                f"named like {skipped}: the family's vlkit_language_model_spec maps the wrong prefixes")
    return (f"The spec's weight_prefixes ({pairs}) renamed tensors of {spec.model_path} to names like {renamed}, "
            f"none of which is a parameter of {spec.architecture}: the target prefixes are wrong")


def read_config(model_path: str) -> dict[str, Any]:
    path = os.path.join(model_path, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no config.json in {model_path}")
    with open(path) as f:
        return json.load(f)


def text_model_spec(model_path: str) -> LanguageModelSpec:
    """The :class:`LanguageModelSpec` of a plain text checkpoint directory (from its config.json)."""
    from vlkit.models.backbones import MODEL_TYPES
    from vlkit.models.spec import LanguageModelSpec

    config = read_config(model_path)
    archs = config.get("architectures") or []
    arch = archs[0] if archs else MODEL_TYPES.get(config.get("model_type", ""))
    if not arch:
        raise ValueError(f"{model_path}/config.json names no architectures and no known model_type")
    return LanguageModelSpec(architecture=arch, config=config, model_path=os.path.abspath(model_path))
