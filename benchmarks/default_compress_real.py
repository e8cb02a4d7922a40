"""Default `compress` and `quantize --per-channel` on the real models of real_models.py.

    python benchmarks/default_compress_real.py [--models NAME ...] [--targeted] [--peers] [--workdir DIR]

For each model (fetched into the cache by real_models.fetch), the real command line runs in a child
process: `compress M` with no options and `quantize --per-channel M`; with `--targeted` also
`compress M --calibrate CALIB.npz --min-cosine 0.99` (calibration inputs drawn with another seed than
the judged ones; a recurrent state is stored [2, N, 128] and a sample rate as a scalar, the `.npz`
rule of issue 13); with `--peers` also onnxruntime's `quantize_dynamic` (per-channel) and NNCodec's
data-free coder at qp -38 and -30 (peers.py; its ratio counts the bitstream, i.e. the weights only).
Each `.dcz` is exported to `.onnx` and judged by onnxruntime, not by our interpreter, on the model's
synthetic inputs: output cosine over all samples against the original in onnxruntime, the
whole-file ratio (original .onnx bytes / .dcz bytes) and the command's wall time.
A command that fails is a row "failed: <last line of its stderr>"; the next one still runs.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

import peers  # noqa: E402
import real_models as rm  # noqa: E402

TARGET_COSINE = 0.99
NNCODEC_QPS = (-38, -30)  # NNCodec's finest step in the table, and a coarser one


def variants(targeted: bool, calib: str) -> dict[str, list[str]]:
    rows = {"compress (default)": ["compress"], "quantize --per-channel": ["quantize", "--per-channel"]}
    # (the targeted row needs --calibrate: the default stays what a user without data gets)
    if targeted:
        rows[f"compress --calibrate --min-cosine {TARGET_COSINE}"] = [
            "compress", "--calibrate", calib, "--min-cosine", str(TARGET_COSINE)]
    return rows


def judge(model: rm.RealModel, path: str, args: list[str], work: str, tag: str, feeds: dict,
          reference: np.ndarray, timeout: float) -> dict:
    dcz, onnx_out = os.path.join(work, f"{tag}.dcz"), os.path.join(work, f"{tag}.onnx")
    seconds, report, error = rm.deepcompress(args[0], path, "-o", dcz, *args[1:], timeout=timeout)
    row = {"seconds": seconds}
    if error is not None:
        return {**row, "error": error}
    row["ratio_file"] = os.path.getsize(path) / os.path.getsize(dcz)
    fidelity = (report or {}).get("fidelity")  # what our command says it reached, if it says
    if fidelity:
        row["claimed"] = fidelity
    _, _, error = rm.deepcompress("export", dcz, "-o", onnx_out)
    if error is not None:
        return {**row, "error": f"export {error}"}
    try:
        row["cosine"] = rm.cosine(rm.run_ort(model, onnx_out, feeds), reference)
    except Exception as e:  # noqa: BLE001 - onnxruntime refusing the export is a figure too
        row["error"] = f"onnxruntime: {str(e).splitlines()[0][:150]}"
    return row


def claimed(fidelity) -> str:
    """Our command's own fidelity figures and the data it measured them on, briefly."""
    if not isinstance(fidelity, dict):
        return str(fidelity)[:90]
    numbers = ", ".join(f"{k} {v:g}" for k, v in fidelity.items() if isinstance(v, (int, float))
                        and not isinstance(v, bool))
    if not numbers:
        return str(fidelity)[:110]
    return f"{numbers} on {fidelity.get('data', '?')} data"


def judge_peer(model: rm.RealModel, path: str, row: dict, feeds: dict, reference: np.ndarray) -> dict:
    if "error" in row:
        return row
    row = {**row, "ratio_file": os.path.getsize(path) / row["bytes"]}
    try:
        row["cosine"] = rm.cosine(rm.run_ort(model, row["onnx"], feeds), reference)
    except Exception as e:  # noqa: BLE001
        row["error"] = f"onnxruntime: {str(e).splitlines()[0][:150]}"
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=sorted(rm.BY_NAME), default=[m.name for m in rm.MODELS])
    parser.add_argument("--targeted", action="store_true", help=f"also compress --min-cosine {TARGET_COSINE}")
    parser.add_argument("--peers", action="store_true",
                        help=f"also NNCodec (qp {', '.join(map(str, NNCODEC_QPS))}; bitstream = weights only) and "
                             "onnxruntime quantize_dynamic")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per command [default: 900]")
    parser.add_argument("--samples", type=int, help="judged samples per model [default: each model's own]")
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # rows appear as they are measured
    logging.getLogger().setLevel(logging.ERROR)  # onnxruntime quantizer's "consider pre-processing" advice
    print(f"{'model':18}{'size':>9}  {'command':44}{'ratio':>8}{'cosine':>10}{'wall s':>8}")
    below, failed = [], []
    nncodec_missing = peers.nncodec_unavailable() if args.peers else None
    if nncodec_missing:
        print(f"NNCodec not run: {nncodec_missing}")
    with tempfile.TemporaryDirectory(dir=args.workdir) as work:
        work = os.path.abspath(work)  # the CLI runs in its source folder
        for name in args.models:
            model = rm.BY_NAME[name]
            try:
                path = str(rm.fetch(model))
                feeds = rm.inputs(model, args.samples, seed=1)
                reference = rm.run_ort(model, path, feeds)
            except Exception as e:  # noqa: BLE001
                print(f"{name:18}  failed to fetch or run: {str(e).splitlines()[0][:150]}")
                continue
            calib = os.path.join(work, f"{name}.calib.npz")
            np.savez(calib, **rm.inputs(model, args.samples, seed=2))
            size = f"{os.path.getsize(path) / 1e6:.2f}MB"
            rows = [(label, lambda cmd=cmd, i=i: judge(model, path, cmd, work, f"{name}.{i}", feeds, reference,
                                                         args.timeout))
                    for i, (label, cmd) in enumerate(variants(args.targeted, calib).items())]
            if args.peers:
                rows.append(("ORT quantize_dynamic per-channel", lambda: judge_peer(
                    model, path, peers.ort_dynamic(path, work, name), feeds, reference)))
                if nncodec_missing is None:
                    rows += [(f"NNCodec qp {qp} (bitstream)", lambda qp=qp: judge_peer(
                        model, path, peers.nncodec(path, qp, work, name), feeds, reference)) for qp in NNCODEC_QPS]
            for i, (label, make) in enumerate(rows):
                r = make()
                head = f"{name if i == 0 else '':18}{size if i == 0 else '':>9}  {label:44}"
                if "error" in r and "ratio_file" not in r:
                    print(f"{head}failed: {r['error']}" + (f"  ({r['seconds']:.1f} s)" if "seconds" in r else ""))
                    if label.startswith("compress (default)"):
                        failed.append(name)
                    continue
                cos = f"{r['cosine']:.4f}" if "cosine" in r else "-"
                print(f"{head}{r['ratio_file']:>7.2f}x{cos:>10}{r['seconds']:>8.1f}"
                      + (f"  {r['error']}" if "error" in r else "")
                      + (f"  (reported: {claimed(r['claimed'])})" if "claimed" in r else ""))
                if label.startswith("compress (default)") and r.get("cosine", 0) < 0.99:
                    below.append(f"{name} {r.get('cosine', float('nan')):.3f}")
    print(f"\ndefault compress below cosine 0.99: {len(below)} of {len(args.models)}"
          + (f" ({', '.join(below)})" if below else "") + (f"; failed on {', '.join(failed)}" if failed else ""))


if __name__ == "__main__":
    main()
