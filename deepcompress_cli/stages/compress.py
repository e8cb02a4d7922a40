"""The paper's whole recipe, tensor by tensor: prune -> share -> Huffman, with sizes after each."""

from __future__ import annotations

from ..tensors import Package, Tensor
from . import compressible, map_weights, no_progress, output_channel_axes
from .entropy import huffman_tensor
from .prune import PruneConfig, prune_tensor
from .share import ShareConfig, share_tensor


def index_and_value_bytes(tensor: Tensor) -> tuple[int, int]:
    """Stored bytes of the position index (gap streams) and of everything else (the values)."""
    index = sum(s.length for slot, s in tensor.streams.items() if slot.startswith("gaps"))
    return index, tensor.stored_bytes - index


def compress_tensor(tensor: Tensor, prune_config: PruneConfig, share_config: ShareConfig, axis: int | None = None):
    sparsity = None if prune_config.threshold_std is not None else prune_config.sparsity.value(tensor)
    pruned, p = prune_tensor(tensor, sparsity, int(prune_config.index_bits.value(tensor)),
                             prune_config.threshold_std)
    shared, q = share_tensor(pruned, int(share_config.bits.value(tensor)), share_config, axis)
    coded, _ = huffman_tensor(shared)
    return coded, stage_row(tensor, pruned.stored_bytes, shared.stored_bytes, coded, p, q)


def stage_row(tensor: Tensor, bytes_p: int, bytes_pq: int, coded: Tensor, p: dict, q: dict) -> dict:
    """One line of the paper's table: a weight's size after P, P+Q and P+Q+H."""
    index_bytes, value_bytes = index_and_value_bytes(coded)
    kept = max(p["kept"], 1)
    return {
        "name": tensor.name, "kind": tensor.kind, "weights": tensor.numel, "kept": p["kept"],
        "kept_fraction": round(p["kept"] / tensor.numel, 6) if tensor.numel else 0.0,
        "index_bits": p["index_bits"], "bits": q["bits"], "rmse": q["rmse"], "max_error": q["max_error"],
        "bytes_original": tensor.nbytes, "bytes_p": bytes_p, "bytes_pq": bytes_pq,
        "bytes_pqh": coded.stored_bytes,
        "bits_per_weight": round(8 * coded.stored_bytes / tensor.numel, 3) if tensor.numel else 0.0,
        "value_bits_per_kept_weight": round(8 * value_bytes / kept, 3),
        "index_bits_per_kept_weight": round(8 * index_bytes / kept, 3),
        "ratio": round(tensor.nbytes / coded.stored_bytes, 3) if coded.stored_bytes else None,
    }


def compress(package: Package, prune_config: PruneConfig, share_config: ShareConfig,
             progress=no_progress, jobs: int = 1) -> list[dict]:
    prune_config, share_config = prune_config.resolved(train=False), share_config.resolved(train=False)
    axes = output_channel_axes(package) if share_config.per_channel else {}
    return map_weights(package, lambda t: compress_tensor(t, prune_config, share_config, axes.get(t.name)),
                       progress, "compress", jobs)


def compress_retrain(package: Package, prune_config: PruneConfig, share_config: ShareConfig, train,
                     steps: int = 1, progress=no_progress) -> tuple[list[dict], list[dict]]:
    """The recipe with retraining between stages: (rows as `compress` gives them, history)."""
    from .entropy import huffman
    from .retraining import prune_retrain, share_retrain, teacher_model

    originals = {t.name: t for t in package.tensors if compressible(t)}
    teacher = teacher_model(package, train)
    p_rows, history = prune_retrain(package, prune_config, train, steps, progress, teacher)
    bytes_p = {t.name: t.stored_bytes for t in package.tensors}
    q_rows, q_history = share_retrain(package, share_config, train, progress, teacher)
    bytes_pq = {t.name: t.stored_bytes for t in package.tensors}
    huffman(package, progress)
    coded = {t.name: t for t in package.tensors}
    p_by, q_by = {r["name"]: r for r in p_rows}, {r["name"]: r for r in q_rows}
    rows = [stage_row(t, bytes_p[name], bytes_pq[name], coded[name], p_by[name], q_by[name])
            for name, t in originals.items()]
    return rows, history + q_history


def totals(rows: list[dict], package: Package) -> dict:
    """Whole-model figures: `ratio_weights` (weight tensors only) and `ratio_tensors` (all tensors,
    biases and others as stored); the whole-file ratio needs the file sizes (api.compress)."""
    compressed = {r["name"] for r in rows}  # entries without a row passed through as they were
    others = sum(t.stored_bytes for t in package.tensors if t.name not in compressed)
    sums = {key: sum(r[key] for r in rows) for key in ("weights", "kept", "bytes_original", "bytes_p",
                                                       "bytes_pq", "bytes_pqh")}
    other_original = sum(t.nbytes for t in package.tensors if t.name not in compressed)
    sums["ratio_weights"] = round(sums["bytes_original"] / sums["bytes_pqh"], 3) if sums["bytes_pqh"] else None
    all_original, all_stored = sums["bytes_original"] + other_original, sums["bytes_pqh"] + others
    sums["ratio_tensors"] = round(all_original / all_stored, 3) if all_stored else None
    return sums
