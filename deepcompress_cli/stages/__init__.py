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
    """A value for `conv` and for `fc` weights (None: the stage's default), and per-layer overrides."""
    conv: float | None = None
    fc: float | None = None
    layers: list[tuple[str, float]] = field(default_factory=list)  # (name glob, value); last match wins

    def value(self, tensor: Tensor):
        for pattern, value in reversed(self.layers):
            if fnmatch.fnmatchcase(tensor.name, pattern):
                return value
        return self.default(tensor)

    def default(self, tensor: Tensor):
        return self.conv if tensor.kind == "conv" else self.fc

    @property
    def given(self) -> bool:
        return self.conv is not None or self.fc is not None or bool(self.layers)

    def with_defaults(self, defaults: tuple) -> "PerKind":
        """Kinds left None take `defaults` (conv, fc)."""
        return PerKind(defaults[0] if self.conv is None else self.conv,
                       defaults[1] if self.fc is None else self.fc, list(self.layers))

    def values(self) -> list:
        return [v for v in (self.conv, self.fc) if v is not None] + [v for _, v in self.layers]


def per_kind(value, layers=None, option: str = "", cls=PerKind) -> PerKind:
    """A PerKind from what users write: `v` (both kinds), {"conv": v, "fc": v} (either or both),
    None (the defaults) or a PerKind; `layers` adds overrides, {glob: v} or [(glob, v)]."""
    if isinstance(value, PerKind):
        result = value
    elif value is None:
        result = cls()
    elif isinstance(value, dict):
        unknown = set(value) - {"conv", "fc"}
        if unknown:
            raise DczError(f"{option}: the kinds are conv and fc, not {', '.join(map(repr, sorted(unknown)))}")
        result = cls(value.get("conv"), value.get("fc"))
    else:
        result = cls(value, value)
    if layers:
        pairs = list(layers.items()) if isinstance(layers, dict) else [tuple(p) for p in layers]
        result = type(result)(**{**result.__dict__, "layers": [*result.layers, *pairs]})
    return result


def check_values(values: PerKind, option: str, layer_option: str, ok: Callable, what: str) -> None:
    """Every value of `values` must pass `ok`; the error names the option it came from."""
    for v in (values.conv, values.fc):
        if v is not None and not valid_number(ok, v):
            raise DczError(f"{option} must be {what}, got {v!r}")
    for pattern, v in values.layers:
        if not isinstance(pattern, str) or not pattern:
            raise DczError(f"{layer_option}: a layer name or glob must be a non-empty string, got {pattern!r}")
        if not valid_number(ok, v):
            raise DczError(f"{layer_option} {pattern}={v!r}: must be {what}")


def valid_number(ok: Callable, v) -> bool:
    import numbers

    return isinstance(v, numbers.Real) and not isinstance(v, bool) and bool(ok(v))


def is_int_in(low: int, high: int) -> Callable:
    import numbers

    return lambda v: isinstance(v, numbers.Integral) and low <= v <= high


def check_patterns(option: str, patterns: Iterable[str], names: list[str], what: str = "tensor") -> None:
    """A glob that matches nothing is a typo, not a no-op: name it and a few real names."""
    for pattern in patterns:
        if not any(fnmatch.fnmatchcase(n, pattern) for n in names):
            shown = ", ".join(names[:5]) + (f", ... ({len(names)} in all)" if len(names) > 5 else "")
            raise DczError(f"{option} {pattern!r} matches no {what} ({what}s: {shown or 'none'})")


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

    def with_defaults(self, defaults: tuple) -> "SparsityBySize":
        return self  # its default is the size rule


def output_channel_axes(package: Package) -> dict[str, int]:
    """Table name -> output-channel axis (graphs.output_channel_axis) of every weight a layer
    consumes that has one: the axis `--per-channel` gives each slice its own range or scale."""
    from ..graphs import output_channel_axis
    from ..onnx_io import weight_consumers

    axes = {}
    shapes = {t.name: t.shape for t in package.tensors}
    for name, (node, index) in weight_consumers(package.graph).items():
        if name in shapes:
            attributes = {a.name: a.i for a in node.attribute if a.type == a.INT}
            axis = output_channel_axis(node.op_type, attributes, index, len(shapes[name]))
            if axis is not None:
                axes[name] = axis
    return axes


def no_progress(items: Iterable, desc: str = "", total: int | None = None, **options) -> Iterable:
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
