"""Compression without retraining (issue 13): our targeted `compress` next to its peers, one run.

    python benchmarks/post_training.py [--models efficientnet,mnist] [--quick] [--no-nncodec] [--workdir DIR]

Models and data from ../shared (read only; converted to the `--calibrate` npz contract in a
temporary folder, never into the repository):

- EfficientNet-Lite0 (ImageNet, 1000 logits): calibrate on natural_images_calib.npz (224 crops),
  judge on natural_images_eval.npz (200 crops); input = (RGB - 127) / 128, NCHW, key `input`.
- mnist_cnn: calibrate on mnist_train10k (with labels), judge on mnist_test (10k, top-1 vs labels);
  input = (x / 255 - 0.5) / 0.5.

Rows, each measured in this run: ours -- `compress --calibrate C` at `--min-agreement 99/95/90`,
`--min-cosine 0.99` (and `--max-accuracy-drop 0.3` for mnist_cnn), `compress` with no options,
`quantize --per-channel`, `share --bits 8` -- each exported to .onnx (`deepcompress export`);
peers -- onnxruntime `quantize_static` (QDQ, per-channel int8, 64 calibration images) and
`quantize_dynamic` (per-channel), zlib -9 and zstd -19 of the .onnx (lossless), and NNCodec 2.1.3's
data-free coder (DeepCABAC) at the issue's qps when it is installed in /work/peers-venv (else the
issue's figures, labelled as quoted).  Every model is judged by onnxruntime on the eval set, so the
judging is independent of our interpreter: top-1 agreement with the original's fp32 output, mean
per-sample logit cosine, and for MNIST top-1 accuracy vs the labels.  Ratio = original .onnx bytes /
compressed file bytes (NNCodec: / its bitstream, which holds the weights only).  Wall time of each of
our commands (issue 13: EfficientNet-Lite0 targeted compress <= 5 min, mnist_cnn <= 1 min).
A command that fails is printed as "failed: <last line of its stderr>" and the run goes on.
Last, per model, the issue's bars (EfficientNet-Lite0 --min-agreement 95: >= 8x whole file at
>= 94 % agreement in <= 5 min; mnist_cnn --max-accuracy-drop 0.3: >= 100x at <= 0.3 points in
<= 1 min; default compress cosine >= 0.99; >= 1.5x NNCodec's ratio at the same fidelity): exit
status 1 when one is missed.

`--headline`: only the issue's headline target per model, on all the images.
`--quick`: 64 eval images / 2000 test digits, 64 calibration images / 2000 training digits, and
only the issue's headline target per model (EfficientNet --min-agreement 95, mnist_cnn
--max-accuracy-drop 0.3) besides the default compress and quantize rows.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from dataclasses import dataclass

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

import peers  # noqa: E402
import real_models as rm  # noqa: E402

SHARED = rm.SHARED

# The issue's own measurements (issue 13, "Why"), printed when NNCodec cannot run here.
QUOTED = {
    "efficientnet": [("NNCodec qp -38", 4.7, 95.0, 0.994), ("NNCodec qp -34", 5.5, 91.0, 0.979),
                     ("NNCodec qp -30", 6.6, 67.0, 0.929), ("NNCodec qp -26", 8.1, 44.0, 0.719),
                     ("ORT quantize_static QDQ per-channel", 3.67, 77.0, 0.910),
                     ("ORT quantize_dynamic per-channel", 3.87, 67.5, 0.845)],
    "mnist": [("NNCodec qp -16", 40.0, None, None, 98.61), ("NNCodec qp -13", 66.9, None, None, 98.50),
              ("NNCodec qp -12", 77.8, None, None, 97.88)],
}
QUOTED_SOURCE = "quoted from issue 13 (NNCodec 2.1.3, measured on this machine earlier)"


@dataclass
class Setup:
    key: str
    model: str
    calib: str  # npz for --calibrate
    eval: str  # npz with `input` (and `labels`)
    nncodec_qps: tuple[int, ...]
    targets: list[tuple[str, list[str]]]  # (label, options after --calibrate C)
    budget_s: float  # the wall-time budget for targeted compress
    headline: str  # the bar: this target's row ...
    bar_ratio: float  # ... reaches this whole-file ratio
    bar_metric: str  # ... at this fidelity ("agreement" in %, or "drop": top-1 points below the original)
    bar_value: float


def prepare(key: str, work: str, quick: bool, headline: bool = False) -> Setup:
    data = SHARED / "data"
    if key == "efficientnet":
        def convert(src, dst, take):
            images = np.load(data / src)["images"][:take]
            np.savez(dst, input=((images.astype(np.float32) - 127) / 128).transpose(0, 3, 1, 2))
        calib, evaluation = os.path.join(work, "effnet_calib.npz"), os.path.join(work, "effnet_eval.npz")
        convert("natural_images_calib.npz", calib, 64 if quick else None)
        convert("natural_images_eval.npz", evaluation, 64 if quick else None)
        targets = [("--min-agreement 95", ["--min-agreement", "95"])]
        if not (quick or headline):
            targets = [("--min-agreement 99", ["--min-agreement", "99"]), *targets,
                       ("--min-agreement 90", ["--min-agreement", "90"]), ("--min-cosine 0.99", ["--min-cosine", "0.99"])]
        return Setup(key, str(SHARED / "models" / "efficientnet_lite0.onnx"), calib, evaluation,
                     (-38, -34, -30, -26), targets, 300, "--min-agreement 95", 8, "agreement", 94)

    def convert(src, dst, take):
        d = np.load(data / src)
        x = ((d["images"][:take].astype(np.float32) / 255 - 0.5) / 0.5)[:, None]
        np.savez(dst, input=x, labels=d["labels"][:take])
    calib, evaluation = os.path.join(work, "mnist_calib.npz"), os.path.join(work, "mnist_test.npz")
    convert("mnist_train10k.npz", calib, 2000 if quick else None)
    convert("mnist_test.npz", evaluation, 2000 if quick else None)
    targets = [("--max-accuracy-drop 0.3", ["--max-accuracy-drop", "0.3"])]
    if not (quick or headline):
        targets += [("--min-agreement 99", ["--min-agreement", "99"]), ("--min-agreement 95", ["--min-agreement", "95"]),
                    ("--min-agreement 90", ["--min-agreement", "90"]), ("--min-cosine 0.99", ["--min-cosine", "0.99"])]
    return Setup(key, str(SHARED / "models" / "mnist_cnn.onnx"), calib, evaluation, (-16, -13, -12), targets, 60,
                 "--max-accuracy-drop 0.3", 100, "drop", 0.3)


# ---------------------------------------------------------------------------------------------
# Judging, in onnxruntime

def ort_logits(path: str, x: np.ndarray, batch: int = 50) -> np.ndarray:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: x[i:i + batch]})[0] for i in range(0, len(x), batch)])


def judge(out: np.ndarray, reference: np.ndarray, labels: np.ndarray | None) -> dict:
    a, b = out.reshape(len(out), -1).astype(np.float64), reference.reshape(len(reference), -1).astype(np.float64)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    per_sample = np.where(norms > 0, (a * b).sum(1) / np.where(norms > 0, norms, 1), 0.0)
    r = {"agreement": 100 * float((a.argmax(1) == b.argmax(1)).mean()), "cosine": float(per_sample.mean())}
    if labels is not None:
        r["accuracy"] = 100 * float((a.argmax(1) == labels).mean())
    return r


# ---------------------------------------------------------------------------------------------
# Rows

def ours(setup: Setup, work: str, quick: bool) -> list[tuple[str, list[str]]]:
    rows = [(f"compress --calibrate {label}", ["compress", setup.model, "--calibrate", setup.calib, *opts])
            for label, opts in setup.targets]
    rows += [("compress (default, no options)", ["compress", setup.model]),
             ("quantize --per-channel", ["quantize", setup.model, "--per-channel"])]
    if not quick:
        rows.append(("share --bits 8", ["share", setup.model, "--bits", "8"]))
    return rows


def run_ours(label: str, args: list[str], work: str, tag: str) -> dict:
    dcz, exported = os.path.join(work, f"{tag}.dcz"), os.path.join(work, f"{tag}.onnx")
    print(f"  running: deepcompress {' '.join(os.path.basename(a) if os.sep in a else a for a in args)}",
          file=sys.stderr, flush=True)
    seconds, report, error = rm.deepcompress(*args, "-o", dcz)
    row = {"label": label, "seconds": seconds, "report": report}
    if error is not None:
        return {**row, "error": error}
    row["bytes"] = os.path.getsize(dcz)
    _, _, error = rm.deepcompress("export", dcz, "-o", exported)
    if error is not None:
        return {**row, "error": f"export {error}"}
    row["onnx"] = exported
    return row


# ---------------------------------------------------------------------------------------------

def summary(report: dict | None) -> str:
    """What our command says it reached, and on what data (its report's `fidelity`), briefly."""
    fidelity = (report or {}).get("fidelity")
    if not isinstance(fidelity, dict):
        return ""
    numbers = ", ".join(f"{k} {v:g}" for k, v in fidelity.items() if isinstance(v, (int, float))
                        and not isinstance(v, bool))
    if not numbers:
        return str(fidelity)[:110]
    return f"reports on {fidelity.get('data', '?')} data: {numbers}"


def bars(setup: Setup, measured: list, base: dict, live: bool) -> list[tuple[str, bool]]:
    """The issue's "Done when" for this model: (text, passed) per bar."""
    ours = {r["label"]: r for who, r in measured if who == "ours"}
    head = ours.get(f"compress --calibrate {setup.headline}")
    if head is None:
        return [(f"compress --calibrate {setup.headline}: did not run or failed", False)]
    if setup.bar_metric == "agreement":
        value, ok = head["agreement"], head["agreement"] >= setup.bar_value
        fidelity = f"agreement {value:.2f} % >= {setup.bar_value} %"
        nn_key, ours_fid = "agreement", head["agreement"]
    else:
        drop = base["accuracy"] - head["accuracy"]
        ok = drop <= setup.bar_value + 1e-9
        fidelity = f"top-1 {head['accuracy']:.2f} % >= {base['accuracy'] - setup.bar_value:.2f} % (drop {drop:.2f})"
        nn_key, ours_fid = "accuracy", head["accuracy"]
    out = [(f"{setup.headline}: whole file {head['ratio']:.1f}x >= {setup.bar_ratio}x", head["ratio"] >= setup.bar_ratio),
           (f"{setup.headline}: {fidelity}", ok),
           (f"{setup.headline}: {head['seconds']:.0f} s <= {setup.budget_s:.0f} s", head["seconds"] <= setup.budget_s)]
    default = ours.get("compress (default, no options)")
    if default is not None:
        out.append((f"default compress: mean cosine {default['cosine']:.4f} >= 0.99", default["cosine"] >= 0.99))
    if live:  # NNCodec's best ratio among its rows at least as faithful as ours (else its most faithful)
        nn = [r for who, r in measured if r["label"].startswith("NNCodec")]
        if nn:
            same = [r for r in nn if r[nn_key] >= ours_fid - 1e-9]
            pick = max(same, key=lambda r: r["ratio"]) if same else max(nn, key=lambda r: r[nn_key])
            how = "at least as faithful" if same else f"its most faithful, {nn_key} {pick[nn_key]:.2f}"
            out.append((f"{setup.headline}: {head['ratio']:.1f}x >= 1.5 x NNCodec {pick['ratio']:.2f}x "
                        f"({pick['label'].split(' (')[0]}, {how})", head["ratio"] >= 1.5 * pick["ratio"]))
    return out


def bench(key: str, args, work: str) -> bool:
    setup = prepare(key, work, args.quick, args.headline)
    evaluation = np.load(setup.eval)
    x, labels = evaluation["input"], evaluation["labels"] if "labels" in evaluation else None
    original = os.path.getsize(setup.model)
    reference = ort_logits(setup.model, x)
    base = judge(reference, reference, labels)
    print(f"\n== {os.path.basename(setup.model)}: {original:,} bytes; calibration {len(np.load(setup.calib)['input'])} "
          f"samples, judged on {len(x)} (onnxruntime)" + (f"; original top-1 {base['accuracy']:.2f} %" if labels is not None
                                                          else "") + " ==", flush=True)
    rows = []
    for i, (label, cmd) in enumerate(ours(setup, work, args.quick)):
        rows.append(("ours", run_ours(label, cmd, work, f"{key}.{i}")))
    calibration = peers.calibration_feeds({"input": np.load(setup.calib)["input"]}, 64)
    rows.append(("peer", peers.ort_static(setup.model, calibration, work, key)))
    rows.append(("peer", peers.ort_dynamic(setup.model, work, key)))
    rows += [("peer", r) for r in peers.lossless(setup.model)]
    live = "--no-nncodec" if args.no_nncodec else peers.nncodec_unavailable()
    if live is None:
        rows += [("peer", peers.nncodec(setup.model, qp, work, key)) for qp in setup.nncodec_qps]

    acc_col = f"{'top-1':>9}" if labels is not None else ""
    print(f"{'':6}{'method':52}{'ratio':>9}{'agree %':>9}{'cosine':>9}{acc_col}{'wall s':>9}")
    print(f"{'':6}{'original (fp32)':52}{1:>8.2f}x{100:>9.2f}{1:>9.4f}"
          + (f"{base['accuracy']:>9.2f}" if labels is not None else "") + f"{'':>9}")
    measured = []
    for who, r in rows:
        head = f"{who:6}{r['label']:52}"
        if "error" in r:
            print(f"{head}failed: {r['error']}" + (f"  ({r['seconds']:.1f} s)" if "seconds" in r else ""))
            continue
        ratio = original / r["bytes"]
        if r.get("lossless"):
            fig = {"agreement": 100.0, "cosine": 1.0, **({"accuracy": base["accuracy"]} if labels is not None else {})}
        else:
            try:
                fig = judge(ort_logits(r["onnx"], x), reference, labels)
            except Exception as e:  # noqa: BLE001
                print(f"{head}{ratio:>8.2f}x  onnxruntime failed: {str(e).splitlines()[0][:120]}")
                continue
        measured.append((who, {**r, **fig, "ratio": ratio}))
        acc = f"{fig['accuracy']:>9.2f}" if labels is not None else ""
        over = "  (over the issue's budget)" if who == "ours" and "--calibrate" in r["label"] and \
            r["seconds"] > setup.budget_s else ""
        print(f"{head}{ratio:>8.2f}x{fig['agreement']:>9.2f}{fig['cosine']:>9.4f}{acc}{r['seconds']:>9.1f}{over}"
              + (f"  {summary(r.get('report'))}" if who == "ours" and summary(r.get("report")) else ""), flush=True)
    if live is not None:
        print(f"      NNCodec not run here ({live}); {QUOTED_SOURCE}:")
    else:
        print(f"      for reference, {QUOTED_SOURCE}:")
    for q in QUOTED[key]:
        label, ratio = q[0], q[1]
        agree = f"{q[2]:>9.2f}" if q[2] is not None else f"{'':>9}"
        cos = f"{q[3]:>9.4f}" if q[3] is not None else f"{'':>9}"
        acc = f"{q[4]:>9.2f}" if len(q) > 4 else (f"{'':>9}" if labels is not None else "")
        print(f"{'quote':6}{label:52}{ratio:>8.2f}x{agree}{cos}{acc}")
    checks = bars(setup, measured, base, live is None)
    print("issue 13's bars" + (" (--quick: fewer images, indicative only)" if args.quick else "") + ":")
    for text, passed in checks:
        print(f"  {'passed' if passed else 'MISSED'}  {text}")
    return all(passed for _, passed in checks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="efficientnet,mnist", help="comma-separated: efficientnet, mnist")
    parser.add_argument("--quick", action="store_true", help="fewer images and targets")
    parser.add_argument("--headline", action="store_true",
                        help="only the issue's headline target per model (all images)")
    parser.add_argument("--no-nncodec", action="store_true", help="skip the live NNCodec rows (quote the issue)")
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # rows appear as they are measured
    keys = [k.strip() for k in args.models.split(",") if k.strip()]
    unknown = [k for k in keys if k not in QUOTED]
    if unknown:
        parser.error(f"unknown model {unknown[0]!r} (choose from efficientnet, mnist)")
    if not (SHARED / "models").exists():
        raise SystemExit(f"{SHARED} not found: this benchmark needs ../shared")
    import onnxruntime as ort

    logging.getLogger().setLevel(logging.ERROR)  # the quantizer's "consider pre-processing" advice
    print(f"numpy {np.__version__}, onnxruntime {ort.__version__}, {os.cpu_count()} cores"
          + ("; --quick" if args.quick else ""))
    with tempfile.TemporaryDirectory(dir=args.workdir) as work:
        work = os.path.abspath(work)  # the CLI runs in its source folder
        passed = [bench(key, args, work) for key in keys]
    if not all(passed):
        sys.exit(1)


if __name__ == "__main__":
    main()
