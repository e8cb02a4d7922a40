"""What `info` shows: a per-tensor table and totals, as data (for --json) and as text."""

from __future__ import annotations

import numpy as np

from .tensors import Package


def tensor_rows(package: Package) -> list[dict]:
    rows = []
    for t in package.tensors:
        values = t.decode()
        rows.append({
            "name": t.name,
            "op": t.op,
            "kind": t.kind,
            "dtype": t.dtype,
            "shape": list(t.shape),
            "chain": t.chain_label,
            "bits_per_weight": round(8 * t.stored_bytes / t.numel, 3) if t.numel else 0.0,
            "sparsity": round(1 - np.count_nonzero(values) / t.numel, 4) if t.numel else 0.0,
            "original_bytes": t.nbytes,
            "stored_bytes": t.stored_bytes,
            "ratio": round(t.nbytes / t.stored_bytes, 3) if t.stored_bytes else None,
        })
    return rows


def summary(package: Package, file_size: int) -> dict:
    rows = tensor_rows(package)
    original = sum(r["original_bytes"] for r in rows)
    stored = sum(r["stored_bytes"] for r in rows)
    weights = [r for r in rows if r["kind"] != "other"]
    return {
        "file_bytes": file_size,
        "tensors": rows,
        "totals": {
            "tensors": len(rows),
            "weights": len(weights),
            "weight_elements": sum(int(np.prod(r["shape"], dtype=object)) for r in weights),
            "original_bytes": original,
            "stored_bytes": stored,
            "ratio": round(original / stored, 3) if stored else None,
        },
    }


def human_bytes(n: int | float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    return f"{n:.2f} GB"


def format_table(headers: list[str], rows: list[list], right: set[int] = frozenset()) -> str:
    """Plain aligned columns; `right` holds the indices of numeric (right-aligned) columns."""
    cells = [headers] + [[str(c) for c in row] for row in rows]
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
    ratio = f"{tot['ratio']:.2f}x" if tot["ratio"] else "-"
    return (f"{table}\n\n{tot['tensors']} tensors ({tot['weights']} weights, {tot['weight_elements']:,} "
            f"weight elements): {human_bytes(tot['original_bytes'])} -> {human_bytes(tot['stored_bytes'])} "
            f"stored ({ratio}); file {human_bytes(info['file_bytes'])}")
