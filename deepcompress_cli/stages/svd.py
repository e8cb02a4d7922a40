"""Low-rank factorization of fully-connected layers (the seed's SVD).

A layer computing Y = X·M with M (K×N) is cut in two through a t-dim bottleneck: M ≈ P·Q with
P = U_t·Σ_t (K×t) and Q = V_tᵀ (t×N) from the SVD M = U Σ Vᵀ, costing t·(K+N) weights instead of
K·N.  Unlike the other stages this one edits the graph: the node becomes two nodes, the weight two
new raw `fc` entries (`<layer>.svd_u` on the input side, `<layer>.svd_v` on the output side).
"""

from __future__ import annotations

import fnmatch
import math
import numbers
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper

from ..errors import DczError
from ..graphs import all_graphs, consumers, make_placeholder, opset_version, placeholder_name, unique_name
from ..tensors import DTYPES, FLOAT_DTYPES, Package, Tensor, numpy_dtype
from . import check_patterns, no_progress, require_finite

ERROR_SAMPLES = 64  # rows of the random input X behind `rel_error`


@dataclass
class SvdConfig:
    rank: int | None = None  # --rank T
    energy: float | None = None  # --energy E: smallest t keeping fraction E of sum(sigma^2)
    ratio: float | None = None  # --ratio R: largest t with t*(u+v) <= R*u*v
    # --layer-rank NAME=T: NAME is a node name, weight name or glob; the last match wins
    layer_ranks: list[tuple[str, int]] = field(default_factory=list)
    layers: list[str] = field(default_factory=list)  # --include: globs over node or weight names; empty = all
    seed: int = 0  # random inputs of the error report
    exclude: list[str] = field(default_factory=list)  # --exclude: globs over node or weight names

    def __post_init__(self):
        if isinstance(self.layer_ranks, dict):
            self.layer_ranks = list(self.layer_ranks.items())
        self.layers, self.exclude = [self.layers] if isinstance(self.layers, str) else list(self.layers), \
            [self.exclude] if isinstance(self.exclude, str) else list(self.exclude)
        _check_config(self)


@dataclass
class _Layer:
    """One Gemm/MatMul of the main graph, and what the stage found out about it."""

    node: onnx.NodeProto
    position: int  # index in graph.node
    weight: str = ""  # value name of its constant weight input
    entry: str = ""  # that weight's table name
    side: int = 1  # which input is the weight
    shape: tuple[int, int] | None = None  # (K, N) of the effective weight M, when it is a matrix
    skipped: str | None = None

    @property
    def name(self) -> str:
        return self.node.name or self.weight or self.node.output[0]

    def matches(self, pattern: str) -> bool:
        return any(n and fnmatch.fnmatchcase(n, pattern) for n in (self.node.name, self.weight))

    def layer_rank(self, config: SvdConfig) -> int | None:
        return next((t for pattern, t in reversed(config.layer_ranks) if self.matches(pattern)), None)

    @property
    def transposed(self) -> bool:
        """Whether the stored weight is Mᵀ, M (K×N) being the matrix with Y = X·M.

        A weight on the left (Y = W·X) is the transposed case: Yᵀ = Xᵀ·Wᵀ.
        """
        return self.side == 0 or bool(self.attr("transB"))

    def attr(self, name: str, default=0):
        return next((helper.get_attribute_value(a) for a in self.node.attribute if a.name == name), default)


def _check_config(config: SvdConfig) -> None:
    given = [f"--{n}" for n in ("rank", "energy", "ratio") if getattr(config, n) is not None]
    if len(given) > 1:
        raise DczError(f"give only one of --rank, --energy, --ratio (got {' and '.join(given)})")
    if config.rank is not None and (not isinstance(config.rank, numbers.Integral) or config.rank < 1):
        raise DczError(f"--rank must be at least 1, got {config.rank}")
    if config.energy is not None and not (isinstance(config.energy, numbers.Real) and 0 < config.energy <= 1):
        raise DczError(f"--energy must be in (0, 1], got {config.energy}")
    if config.ratio is not None and not (isinstance(config.ratio, numbers.Real) and 0 < config.ratio < 1):
        raise DczError(f"--ratio must be in (0, 1), got {config.ratio}")
    for pattern, t in config.layer_ranks:
        if not isinstance(t, numbers.Integral) or t < 1:
            raise DczError(f"--layer-rank {pattern}={t}: the rank must be an integer of at least 1")


def _find_layers(package: Package, config: SvdConfig) -> list[_Layer]:
    """Every Gemm/MatMul of the main graph, with a skip reason when it cannot or must not be split."""
    graph = package.graph.graph
    constants = {t.name: placeholder_name(t) for t in graph.initializer if placeholder_name(t)}
    table = {t.name: t for t in package.tensors}
    opset = opset_version(package.graph)
    layers = []
    for position, node in enumerate(graph.node):
        if node.op_type not in ("Gemm", "MatMul") or node.domain not in ("", "ai.onnx"):
            continue
        layer = _Layer(node, position)
        layers.append(layer)
        side = next((i for i in (1, 0) if i < len(node.input) and node.input[i] in constants), None)
        if side is None:
            layer.skipped = "its weight is not a constant initializer in the tensor table"
            continue
        layer.side, layer.weight, layer.entry = side, node.input[side], constants[node.input[side]]
        tensor = table[layer.entry]
        if tensor.dtype not in FLOAT_DTYPES or len(tensor.shape) != 2:
            layer.skipped = "its weight is not a 2-D float tensor"
            continue
        layer.shape = tensor.shape[::-1] if layer.transposed else tensor.shape
        if tensor.kind == "other":
            layer.skipped = "its weight is excluded from compression"
        elif node.op_type == "Gemm" and side == 0:
            layer.skipped = "the constant is Gemm's input A"
        elif node.op_type == "Gemm" and layer.attr("transA") and opset < 11:
            layer.skipped = f"Gemm with transA=1 cannot be split at opset {opset} (needs 11)"
        elif config.layers and not any(layer.matches(g) for g in config.layers):
            layer.skipped = "not selected by --include"
        elif any(layer.matches(g) for g in config.exclude):
            layer.skipped = "excluded by --exclude"
    return layers


def _choose_rank(sigma: np.ndarray, u: int, v: int, config: SvdConfig, layer_rank: int | None) -> int:
    if layer_rank is not None or config.rank is not None:
        t = layer_rank if layer_rank is not None else config.rank
    elif config.energy is not None:
        energy = np.cumsum(sigma ** 2)
        # tolerance: rounding leaves a rank-r matrix's cumulative energy a hair below 1 at r
        t = int(np.searchsorted(energy, (config.energy - 1e-9) * energy[-1])) + 1 if energy[-1] > 0 else 1
    else:
        t = math.floor(config.ratio * u * v / (u + v) + 1e-9)
    return min(t, len(sigma))


def _relative_error(m: np.ndarray, p: np.ndarray, q: np.ndarray, seed: int) -> float:
    """||X·M − X·P·Q||_F / ||X·M||_F on seeded standard-normal inputs X."""
    x = np.random.default_rng(seed).standard_normal((ERROR_SAMPLES, m.shape[0]))
    exact = x @ m
    norm = np.linalg.norm(exact)
    return float(np.linalg.norm(exact - (x @ p) @ q) / norm) if norm else 0.0


def _copy_attributes(node, source, keep) -> None:
    node.attribute.extend(a for a in source.attribute if a.name in keep)


def _split(layer: _Layer, p: np.ndarray, q: np.ndarray, names: tuple[str, str, str], opset: int):
    """The two replacement nodes and the factors (u, v) as stored, in the original's orientation."""
    node, u_name, v_name, mid = layer.node, *names
    x = node.input[1 - layer.side]
    doc = node.doc_string or None
    if node.op_type == "MatMul" and layer.side == 1:
        first = helper.make_node("MatMul", [x, u_name], [mid], u_name, doc, node.domain)
        second = helper.make_node("MatMul", [mid, v_name], list(node.output), v_name, doc, node.domain)
        return (first, second), p, q
    if node.op_type == "MatMul":  # Y = W·X ≈ Qᵀ·(Pᵀ·X)
        first = helper.make_node("MatMul", [u_name, x], [mid], u_name, doc, node.domain)
        second = helper.make_node("MatMul", [v_name, mid], list(node.output), v_name, doc, node.domain)
        return (first, second), p.T, q.T
    trans_b = bool(layer.attr("transB"))
    if opset >= 11:  # C became optional in opset 11: the first half is a plain Gemm
        first = helper.make_node("Gemm", [x, u_name], [mid], u_name, doc, node.domain)
        _copy_attributes(first, node, ("transA", "transB"))
        u = p.T if trans_b else p
    else:  # no transA here (skipped earlier): MatMul does X·P
        first = helper.make_node("MatMul", [x, u_name], [mid], u_name, doc, node.domain)
        u = p
    # alpha, beta, bias and any old attribute (broadcast...) stay on the half that produces Y
    second = helper.make_node("Gemm", [mid, v_name, *node.input[2:]], list(node.output), v_name, doc, node.domain)
    _copy_attributes(second, node, {a.name for a in node.attribute} - {"transA"})
    return (first, second), u, (q.T if trans_b else q)


def _names_in_use(package: Package) -> set:
    taken = {t.name for t in package.tensors}
    for g in all_graphs(package.graph.graph):
        taken.update(v.name for v in (*g.input, *g.output, *g.value_info, *g.initializer))
        for n in g.node:
            taken.update((*n.input, *n.output, n.name))
    return taken


def _placeholder(name: str, array: np.ndarray, dtype: str) -> TensorProto:
    proto = TensorProto(name=name, dims=array.shape, data_type=DTYPES[dtype][1])
    make_placeholder(proto, name)
    return proto


def _row(layer: _Layer) -> dict:
    """A report row for a layer left as it is (`_factor` fills in the rank it chose)."""
    known = layer.shape is not None
    u, v = layer.shape if known else (None, None)
    params = u * v if known else 0
    return {"name": layer.name, "weight": layer.weight, "op": layer.node.op_type, "u": u, "v": v, "t": None,
            "params_before": params, "params_after": params, "energy_kept": 1.0 if known else None,
            "rel_error": 0.0 if known else None, "skipped": layer.skipped}


def _factor(layer: _Layer, package: Package, config: SvdConfig, taken: set, opset: int):
    """(report row, replacement nodes or None, new (TensorProto, Tensor) pairs)."""
    tensor = package.tensor(layer.entry)
    w = tensor.decode().astype(np.float64)
    require_finite(tensor, w)
    m = w.T if layer.transposed else w
    u, v = m.shape
    row = _row(layer)
    left, sigma, right = np.linalg.svd(m, full_matrices=False)
    t = _choose_rank(sigma, u, v, config, layer.layer_rank(config))
    if t < 1:
        return {**row, "skipped": f"ratio {config.ratio} leaves no rank (one costs {u + v} weights)"}, None, []
    if t * (u + v) >= u * v:
        return {**row, "skipped": f"rank {t} would not shrink it ({t}*({u}+{v}) >= {u}*{v})"}, None, []
    base = layer.node.name or layer.weight
    names = tuple(unique_name(f"{base}.svd_{s}", taken) for s in ("u", "v", "mid"))
    dtype = numpy_dtype(tensor.dtype)
    p, q = (left[:, :t] * sigma[:t]).astype(dtype), right[:t].astype(dtype)
    nodes, *stored = _split(layer, p, q, names, opset)
    new = [(_placeholder(name, a, tensor.dtype), Tensor.raw(name, np.ascontiguousarray(a), "fc", node.op_type))
           for name, a, node in zip(names, stored, nodes)]
    p, q = p.astype(np.float64), q.astype(np.float64)  # the error of the factors as stored (rounded)
    total = float(np.sum(sigma ** 2))
    row.update(t=t, params_after=t * (u + v), rel_error=_relative_error(m, p, q, config.seed),
               energy_kept=float(np.sum(sigma[:t] ** 2)) / total if total else 1.0)
    return row, nodes, new


def _replace(repeated, items) -> None:
    copies = [type(i)() for i in items]
    for copy, item in zip(copies, items):
        copy.CopyFrom(item)
    del repeated[:]
    repeated.extend(copies)


def _splice(items, key, added: dict, dropped: set) -> list:
    """`items` with each item's additions right after it (in its place when it is dropped)."""
    out = []
    for item in items:
        out += ([] if key(item) in dropped else [item]) + added.get(key(item), [])
    return out


def _install(package: Package, replacements: dict, added: dict) -> None:
    """Put the new nodes in place of the old, and the new weights where the old weight was.

    An old weight goes only when nothing uses it any more (another layer may share it); one that is
    also a graph input (IR < 4) is replaced in `graph.input` too, so the two lists stay consistent.
    """
    graph = package.graph.graph
    _replace(graph.node, [n for i, node in enumerate(graph.node) for n in replacements.get(i, [node])])
    uses = consumers(package.graph)
    dropped = {w for w in added if w not in uses and w not in {o.name for o in graph.output}}
    inputs = {i.name for i in graph.input}
    entry_of = {t.name: placeholder_name(t) for t in graph.initializer}
    _replace(graph.initializer, _splice(graph.initializer, lambda t: t.name,
                                        {w: [p for p, _ in new] for w, new in added.items()}, dropped))
    graph_inputs = {w: [helper.make_tensor_value_info(p.name, p.data_type, p.dims) for p, _ in new]
                    for w, new in added.items() if w in inputs}
    _replace(graph.input, _splice(graph.input, lambda i: i.name, graph_inputs, dropped))
    _replace(graph.value_info, [v for v in graph.value_info if v.name not in dropped])
    package.tensors = _splice(package.tensors, lambda t: t.name,
                              {entry_of[w]: [t for _, t in new] for w, new in added.items()},
                              {entry_of[w] for w in dropped})


def svd(package: Package, config: SvdConfig, progress=no_progress) -> list[dict]:
    """Factor every selected fully-connected layer in place; one report row per Gemm/MatMul."""
    _check_config(config)
    layers = _find_layers(package, config)
    names = sorted({n for layer in layers for n in (layer.node.name, layer.weight) if n})
    for option, patterns in (("--layer-rank", [p for p, _ in config.layer_ranks]), ("--include", config.layers),
                             ("--exclude", config.exclude)):
        check_patterns(option, patterns, names, what="layer")
    has_method = any(getattr(config, n) is not None for n in ("rank", "energy", "ratio"))
    if not has_method and (not config.layer_ranks or any(
            layer.skipped is None and layer.layer_rank(config) is None for layer in layers)):
        raise DczError("give one of --rank, --energy or --ratio (or a --layer-rank for every selected layer)")
    taken, opset = _names_in_use(package), opset_version(package.graph)
    rows, replacements, added = [], {}, defaultdict(list)
    for layer in progress(layers, desc="svd", total=len(layers)):
        if layer.skipped is not None:
            rows.append(_row(layer))
            continue
        row, nodes, new = _factor(layer, package, config, taken, opset)
        rows.append(row)
        if nodes is not None:
            replacements[layer.position] = nodes
            added[layer.weight] += new
    _install(package, replacements, added)
    return rows
