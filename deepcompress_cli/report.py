"""What `info` shows: a per-tensor table and totals, as data (for --json) and as text."""

from __future__ import annotations

import numpy as np

from .codecs import decode_slot, scale, slot_of, sparse
from .tensors import Package, Tensor
from .text import printable


def sparsity(t: Tensor) -> float:
    """Fraction of zero elements.  A sparse chain is not expanded (a small file can declare a huge
    tensor of fillers): its entries are decoded and checked, and only their values counted, so
    `info`'s work is bounded by the stored entries, not by the declared tensor size."""
    if not t.numel:
        return 0.0
    step = t.chain[0]
    if step.codec == "scale":  # x positive scale keeps zeros zero: count before it (a sparse chain below)
        scale.check_scales(decode_slot(t, step.outputs["scales"]))
        step = next((s for s in t.chain if s.input == step.outputs["values"]), step)
    if step.codec == "sparse":
        sparse.positions(step.params, slot_of(t, step.input), decode_slot(t, step.outputs["gaps"]))
        nonzero = np.count_nonzero(decode_slot(t, step.outputs["values"]))
    else:
        nonzero = np.count_nonzero(t.decode())
    return round(1 - nonzero / t.numel, 4)


def tensor_rows(package: Package) -> list[dict]:
    rows = []
    for t in package.tensors:
        rows.append({
            "name": t.name,
            "op": t.op,
            "kind": t.kind,
            "dtype": t.dtype,
            "shape": list(t.shape),
            "chain": t.chain_label,
            "bits_per_weight": round(8 * t.stored_bytes / t.numel, 3) if t.numel else 0.0,
            "sparsity": sparsity(t),
            "original_bytes": t.nbytes,
            "stored_bytes": t.stored_bytes,
            "ratio": round(t.nbytes / t.stored_bytes, 3) if t.stored_bytes else None,
        })
    return rows


def summary(package: Package, file_size: int) -> dict:
    """Ratios are named for what they divide: `ratio_weights` (weight tensors, original / stored),
    `ratio_tensors` (all tensors), `ratio_file` (input file / output file, where there are two files)."""
    rows = tensor_rows(package)
    original = sum(r["original_bytes"] for r in rows)
    stored = sum(r["stored_bytes"] for r in rows)
    weights = [r for r in rows if r["kind"] != "other"]
    weight_original = sum(r["original_bytes"] for r in weights)
    weight_stored = sum(r["stored_bytes"] for r in weights)
    return {
        "file_bytes": file_size,
        "metadata": dict(package.metadata),
        "tensors": rows,
        "totals": {
            "tensors": len(rows),
            "weights": len(weights),
            "weight_elements": sum(int(np.prod(r["shape"], dtype=object)) for r in weights),
            "original_bytes": original,
            "stored_bytes": stored,
            "weight_original_bytes": weight_original,
            "weight_stored_bytes": weight_stored,
            "ratio_tensors": _ratio(original, stored),
            "ratio_weights": _ratio(weight_original, weight_stored),
        },
    }


def _ratio(original, stored):
    return round(original / stored, 3) if stored else None


def _x(ratio) -> str:
    return f"{ratio:.2f}x" if ratio else "-"


def human_bytes(n: int | float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    return f"{n:.2f} GB"


def format_table(headers: list[str], rows: list[list], right: set[int] = frozenset()) -> str:
    """Plain aligned columns; `right` holds the indices of numeric (right-aligned) columns."""
    cells = [headers] + [[printable(str(c)) for c in row] for row in rows]  # names come from files
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    for row in cells:
        lines.append("  ".join(c.rjust(w) if i in right else c.ljust(w)
                               for i, (c, w) in enumerate(zip(row, widths))).rstrip())
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_summary(info: dict) -> str:
    rows = [[r["name"], r["op"], r["kind"], "x".join(map(str, r["shape"])) or "scalar", r["chain"],
             f"{r['bits_per_weight']:.2f}", f"{100 * r['sparsity']:.1f}%", human_bytes(r["stored_bytes"]),
             f"{r['ratio']:.2f}x" if r["ratio"] else "-"] for r in info["tensors"]]
    table = format_table(["tensor", "op", "kind", "shape", "encoding", "bits/w", "sparsity", "stored",
                          "ratio"], rows, right={5, 6, 7, 8})
    tot = info["totals"]
    return (f"{table}\n\n{_format_metadata(info.get('metadata') or {})}{tot['tensors']} tensors ({tot['weights']} weights, {tot['weight_elements']:,} "
            f"weight elements): {human_bytes(tot['original_bytes'])} -> {human_bytes(tot['stored_bytes'])} "
            f"stored; ratio weights {_x(tot['ratio_weights'])}, all tensors {_x(tot['ratio_tensors'])}; "
            f"file {human_bytes(info['file_bytes'])}")


def format_written(data: dict) -> str:
    """The last line of a stage's report: the file written and its ratios."""
    return (f"{data['output']}: {human_bytes(data['bytes'])} ({data['format']}); tensors "
            f"{human_bytes(data['tensor_bytes_before'])} -> {human_bytes(data['tensor_bytes_after'])} "
            f"(ratio tensors {_x(data['ratio_tensors'])}, file {_x(data['ratio_file'])})")


def _format_metadata(metadata: dict) -> str:
    if not metadata:
        return ""
    return "metadata:\n" + "".join(f"  {printable(k)} = {printable(v)}\n" for k, v in sorted(metadata.items())) + "\n"


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def format_prune(rows: list[dict]) -> str:
    table = [[r["name"], r["kind"], f"{r['weights']:,}", _pct(1 - r["sparsity"]), "-" if r["threshold"] is None else f"{r['threshold']:.4g}",
              r["index_bits"], f"{r['fillers']:,}", human_bytes(r["bytes_before"]), human_bytes(r["bytes_after"])]
             for r in rows]
    return format_table(["layer", "kind", "weights", "kept", "threshold", "idx bits", "fillers", "before",
                         "after"], table, right={2, 3, 4, 5, 6, 7, 8})


def format_share(rows: list[dict]) -> str:
    table = [[r["name"], r["kind"], f"{r['clustered']:,}", r["bits"], r["centroids"], r["iterations"],
              f"{r['rmse']:.3g}", f"{r['max_error']:.3g}", human_bytes(r["bytes_before"]),
              human_bytes(r["bytes_after"])] for r in rows]
    return format_table(["layer", "kind", "clustered", "bits", "centroids", "iters", "rmse", "max err",
                         "before", "after"], table, right=set(range(2, 10)))


def format_quantize(rows: list[dict]) -> str:
    table = [[r["name"], r["kind"], r["bits"], "tensor" if r["channels"] == 1 else f"axis {r['axis']}" + (" (scale)" if r.get("scaled") else ""),
              "sym" if r["symmetric"] else "asym", f"{r['rmse']:.3g}", f"{r['max_error']:.3g}", f"{r['mean_error']:+.2g}",
              human_bytes(r["bytes_before"]), human_bytes(r["bytes_after"])] for r in rows]
    return format_table(["layer", "kind", "bits", "range per", "mode", "rmse", "max err", "bias", "before", "after"],
                        table, right={2, 5, 6, 7, 8, 9})


def format_svd(rows: list[dict]) -> str:
    def num(x, fmt="{:,}"):
        return "-" if x is None else fmt.format(x)

    table = [[r["name"], r["op"], num(r["u"]), num(r["v"]), num(r["t"]), num(r["params_before"]),
              num(r["params_after"]), num(r["energy_kept"], "{:.4f}"), num(r["rel_error"], "{:.4f}"),
              r["skipped"] or ""] for r in rows]
    return format_table(["layer", "op", "u", "v", "t", "params", "after", "energy", "rel err", "skipped"],
                        table, right=set(range(2, 9)))


def format_huffman(rows: list[dict]) -> str:
    table = []
    for r in rows:
        for slot, s in r["streams"].items():
            excess = s["code_bytes"] / s["entropy_bytes"] - 1 if s["entropy_bytes"] else 0.0
            table.append([r["name"], slot, s["coding"], f"{s['symbols']:,}", human_bytes(s["entropy_bytes"]),
                          human_bytes(s["code_bytes"]), f"{100 * excess:+.2f}%", human_bytes(s["coded_bytes"])])
    return format_table(["layer", "stream", "coding", "symbols", "entropy", "code", "vs entropy", "with tables"],
                        table, right={3, 4, 5, 6, 7})


def format_compress(data: dict) -> str:
    """The paper's table: per layer sizes after P, P+Q, P+Q+H, bits per weight and per kept weight."""
    def ratio(original, stored):
        return f"{original / stored:.1f}x" if stored else "-"

    rows, t = data["layers"], data["totals"]
    table = [[r["name"], r["kind"], f"{r['weights']:,}", _pct(r["kept_fraction"]), human_bytes(r["bytes_p"]),
              human_bytes(r["bytes_pq"]), human_bytes(r["bytes_pqh"]), ratio(r["bytes_original"], r["bytes_pqh"]),
              f"{r['bits_per_weight']:.2f}", f"{r['value_bits_per_kept_weight']:.2f}",
              f"{r['index_bits_per_kept_weight']:.2f}"] for r in rows]
    table.append(["total", "", f"{t['weights']:,}", _pct(t["kept"] / t["weights"]) if t["weights"] else "-",
                  human_bytes(t["bytes_p"]), human_bytes(t["bytes_pq"]), human_bytes(t["bytes_pqh"]),
                  ratio(t["bytes_original"], t["bytes_pqh"]),
                  f"{8 * t['bytes_pqh'] / t['weights']:.2f}" if t["weights"] else "-", "", ""])
    text = format_table(["layer", "kind", "weights", "kept", "P", "P+Q", "P+Q+H", "ratio", "bits/w",
                         "value bits/kept", "index bits/kept"], table, right=set(range(2, 11)))
    text += f"\n\n{format_compress_line(data)}"
    if data.get("gzip9_bytes"):
        onnx_bytes, gzip_bytes = data["onnx_bytes"], data["gzip9_bytes"]
        text += (f"\ngzip -9 of the original .onnx: {human_bytes(onnx_bytes)} -> {human_bytes(gzip_bytes)} "
                 f"({onnx_bytes / gzip_bytes:.2f}x)")
    return text


def format_compress_line(data: dict) -> str:
    t = data["totals"]
    return (f"{data['output']}: {human_bytes(data['bytes'])}; weights {human_bytes(t['bytes_original'])} -> "
            f"{human_bytes(t['bytes_pqh'])}: ratio weights {_x(t['ratio_weights'])}, all tensors "
            f"{_x(t['ratio_tensors'])}, file {_x(t.get('ratio_file'))}")


def format_bench(report: dict) -> str:
    rows = []
    for r in report["models"]:
        for mode, stats in r["modes"].items():
            lat = stats["latency"] or {}
            quality = "-"
            if "accuracy" in stats:
                quality = f"top-1 {100 * stats['accuracy']:.2f}%"
            elif "fidelity" in stats:
                f = stats["fidelity"]
                quality = f"cos {f['cosine']:.5f}, top-1 agree {100 * f['top1_agreement']:.1f}%"
            first = mode == next(iter(r["modes"]))
            rows.append([r["model"] if first else "", human_bytes(r["file_bytes"]) if first else "",
                         _x(r.get("ratio_file")) if first else "", _x(r.get("ratio_weights")) if first else "", mode,
                         f"{lat.get('median_ms', float('nan')):.2f}", f"{lat.get('p90_ms', float('nan')):.2f}",
                         quality if mode != "ort" else ""])
    text = format_table(["model", "file", "ratio file", "ratio weights", "mode", "median ms", "p90 ms", "quality"],
                        rows, right={1, 2, 3, 5, 6})
    for gate in report["gates"]:
        status = "ok" if gate["passed"] else "FAILED"
        text += "\n" + printable(f"gate {gate['gate']} {gate['model']}" + (f" ({gate['mode']})" if gate["mode"] else "")
                                  + f": {gate['value']} vs {gate['limit']}: {status}")
    return text


def format_fidelity(fidelity: dict | None) -> str:
    """The line every compress report ends with: what fidelity was reached, on what data."""
    if not fidelity:
        return "fidelity: not measured"
    if not fidelity.get("measured", True):
        return f"fidelity not measured: {fidelity.get('reason') or 'no data'}"
    text = (f"fidelity: cosine {fidelity['cosine']:.6f}, top-1 agreement {100 * fidelity['top1_agreement']:.2f}%")
    if fidelity.get("accuracy") is not None:
        text += (f", top-1 {100 * fidelity['accuracy']:.2f}% (original {100 * fidelity['original_accuracy']:.2f}%, "
                 f"drop {fidelity['accuracy_drop']:.2f} points)")
    return text + f" on {fidelity.get('described', 'the data')}"


def format_planned(data: dict) -> str:
    """A planned run: the chosen setting of every layer, the fidelity reached and the file."""
    def step(r):
        if r["step"] is not None:
            return f"rms/{2 ** (r['step'] / 2):.3g}"
        if r["bits"] is not None:
            return f"{r['bits']} bits"
        return "float"

    rows = [[r["name"], f"{r['weights']:,}", _pct(r["kept_fraction"]), step(r),
             "-" if r["levels"] is None else r["levels"], human_bytes(r["bytes"]), f"{r['bits_per_weight']:.2f}",
             "-" if r["distortion_share"] is None else _pct(r["distortion_share"]),
             "data" if r["data_aware"] else "nearest"] for r in data["layers"]]
    t = data["totals"]
    rows.append(["total", f"{t['weights']:,}", _pct(t["kept"] / t["weights"]) if t["weights"] else "-", "", "",
                 human_bytes(t["bytes_stored"]),
                 f"{8 * t['bytes_stored'] / t['weights']:.2f}" if t["weights"] else "-", "", ""])
    text = format_table(["layer", "weights", "kept", "step", "levels", "bytes", "bits/w", "distortion", "rounding"],
                        rows, right={1, 2, 4, 5, 6, 7})
    lines = [text, ""]
    target = data.get("target") or []
    if target:
        what = ", ".join(f"{g['kind'].replace('_', '-')} {g['value']:g}" for g in target)
        status = "met" if data.get("target_met") else "not met"
        lines.append(f"target{' (default)' if data.get('default_target') else ''}: {what}: {status}"
                     + (" losslessly" if data.get("lossless") else ""))
    lines.append(format_fidelity(data.get("fidelity")))
    lines.extend(printable(n) for n in data.get("notes") or ())
    lines.append(f"{data['output']}: {human_bytes(data['bytes'])} ({data['format']}); weights "
                 f"{human_bytes(t['bytes_original'])} -> {human_bytes(t['bytes_stored'])} (ratio weights "
                 f"{_x(t['ratio_weights'])}, file {_x(data['ratio_file'])})")
    if data.get("gzip9_bytes"):
        lines.append(f"gzip -9 of the original .onnx: {human_bytes(data['onnx_bytes'])} -> "
                     f"{human_bytes(data['gzip9_bytes'])} ({data['onnx_bytes'] / data['gzip9_bytes']:.2f}x)")
    return "\n".join(lines)
