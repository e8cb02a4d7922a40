"""Compression stages: each takes a Package and re-encodes its weight tensors in place.

A stage's per-tensor settings come from a `PerKind` value (a default for `conv` and for `fc`
weights, with optional per-layer overrides by name glob), the way the paper sets conv and fc
layers differently.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np

from ..codecs import validate_chain
from ..errors import DczError
from ..tensors import FLOAT_DTYPES, Package, Tensor


@dataclass
class PerKind:
    conv: float
    fc: float
    layers: list[tuple[str, float]] = field(default_factory=list)  # (name glob, value); last match wins

    def value(self, tensor: Tensor):
        for pattern, value in reversed(self.layers):
            if fnmatch.fnmatchcase(tensor.name, pattern):
                return value
        return self.default(tensor)

    def default(self, tensor: Tensor):
        return self.conv if tensor.kind == "conv" else self.fc


@dataclass
class SparsityBySize(PerKind):
    """Sparsity from a layer's size: it keeps `scale / sqrt(n)` of its n weights (at most all),
    unless a value is given for its kind (`conv`/`fc` not None).

    Big layers are the redundant ones (the paper prunes AlexNet's fc6 to 9 % but conv1 to 84 %);
    with retraining this one rule reaches the paper's kind of per-layer profile without a table.
    """
    scale: float = 12.0

    def default(self, tensor: Tensor):
        given = super().default(tensor)
        if given is not None:
            return given
        return 1.0 - min(1.0, self.scale / max(tensor.numel, 1) ** 0.5)


def no_progress(items: Iterable, desc: str = "", total: int | None = None) -> Iterable:
    return items


def map_weights(package: Package, encode: Callable[[Tensor], tuple[Tensor, dict]],
                progress=no_progress, desc: str = "", jobs: int = 1) -> list[dict]:
    """Replace every weight tensor by `encode(tensor)`'s new tensor; collect the report rows.

    With `jobs` > 1 tensors are encoded on that many threads (numpy releases the GIL in its
    heavy loops); results are placed by position, so the output does not depend on `jobs`.
    Entries marked as weights that no stage can re-encode (see `compressible`) are left as they are.
    Every new entry is checked with the reader's own rules, so a stage cannot produce a file
    that `info` refuses.
    """
    weights = [i for i, t in enumerate(package.tensors) if compressible(t)]
    if jobs > 1 and len(weights) > 1:
        from concurrent.futures import ThreadPoolExecutor, as_completed

        # biggest first, so the largest layer does not start last and leave the others idle
        order = sorted(weights, key=lambda i: -package.tensors[i].numel)
        results = {}
        with ThreadPoolExecutor(min(jobs, len(weights))) as pool:
            futures = {pool.submit(encode, package.tensors[i]): i for i in order}
            try:
                for future in progress(as_completed(futures), desc=desc, total=len(weights)):
                    results[futures[future]] = future.result()
            except BaseException:  # an error or Ctrl-C: don't start the tensors still waiting
                for future in futures:
                    future.cancel()
                raise
        return _collect(package, weights, (results[i] for i in weights))
    return _collect(package, weights, (encode(package.tensors[i]) for i in progress(weights, desc=desc,
                                                                                      total=len(weights))))


def _collect(package: Package, positions: list[int], results: Iterable) -> list[dict]:
    rows = []
    for i, (new, row) in zip(positions, results):
        validate_chain(new)  # a stage's bug must not become a file the reader rejects
        package.tensors[i] = new
        rows.append(row)
    return rows


def compressible(tensor: Tensor) -> bool:
    """Whether the stages re-encode this entry: a conv/fc weight that is a float tensor with at
    least one dim and one element.  Any other entry marked conv/fc (only a hand-made file has
    them: integer or bool weights, scalars, empty tensors) passes through every stage unchanged,
    like an `other` tensor: there is nothing to prune, cluster or scale in it."""
    return tensor.is_weight and tensor.dtype in FLOAT_DTYPES and len(tensor.shape) > 0 and tensor.numel > 0


def require_compressible(tensor: Tensor, what: str) -> None:
    """For the per-tensor functions called directly (the stages skip such entries)."""
    if not compressible(tensor):
        raise DczError(f"tensor {tensor.name!r} ({tensor.dtype}, shape {list(tensor.shape)}, kind {tensor.kind}) "
                       f"cannot be {what}: only non-empty float weights can")


def require_finite(tensor: Tensor, values: np.ndarray) -> None:
    """NaN or infinite weights would be pruned, clustered or scaled into garbage: refuse them."""
    if values.dtype.kind == "f" and not np.isfinite(values).all():
        raise DczError(f"tensor {tensor.name!r} has NaN or infinite weights; fix the model first")
