"""Deep Compression with retraining on the real MNIST CNN, next to the same recipe without it.

    python benchmarks/retraining.py [--shared ../shared] [--workdir DIR]

Reads ../shared/models/mnist_cnn.onnx and ../shared/data (MNIST train 10k, test 10k; converted
to the `--train`/`--data` npz contract in a temporary folder, never into the repository), then
runs the real command line and prints, side by side in one run:

- `compress --train` with its defaults: ratio and MNIST top-1 after each stage (P, P+Q, P+Q+H),
  and its wall time (the issue's budget: 15 minutes on two cores);
- the same per-layer sparsities and bits *without* retraining;
- the paper's settings without retraining (conv 60 %, fc 90 % pruned, 8/5-bit codebooks);
- the peer: NNCodec (MPEG NNR, DeepCABAC) 66.9x at 98.50 % on this model (measured by the issue's
  author, not here), and the paper's LeNet-5: 39x;
- the bar (issue 6), checked here rather than in `make test` (about 20 minutes on two cores):
  >= 70x in weights and in all tensors, at >= 98.27 % top-1 (0.5 points below the original's
  98.77 %) in onnxruntime on the exported model. Exit status 1 when it is missed.

Then (issue 15), beside it in the same run (`--models` picks the sections):

- EfficientNet-Lite0 (../shared/models), `compress --train <natural_images_calib as model inputs>
  --min-agreement 95` (no labels: distillation), judged in onnxruntime on natural_images_eval:
  whole-file ratio, top-1 agreement and logit cosine with the original, wall time; beside the
  same target without retraining (`--calibrate`) and NNCodec's quoted figures. Bar: >= 15x at
  >= 95 % agreement within 15 minutes.
- A transformer encoder from a PyPI wheel (paraphrase-MiniLM-L3-v2, fetched by real_models.py
  into its cache, never committed), on token inputs made here: ratio and output cosine of
  `compress --calibrate --min-cosine C` (before retraining) and `compress --train --min-cosine C`
  (after), judged in onnxruntime on other inputs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # post_training, real_models (issue 15's sections)

NNCODEC = (66.9, 0.9850)
BAR_RATIO, BAR_TOP1 = 70, 0.9827
BAR_FILE = 100  # issue 11: the whole .dcz file, header and graph included


def run(*args: str) -> dict:
    done = subprocess.run([sys.executable, "-m", "deepcompress_cli", "--json", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"deepcompress {' '.join(args)} failed: {done.stderr.strip()}")
    return json.loads(done.stdout)


def to_npz(source: str, target: str) -> None:
    data = np.load(source, allow_pickle=False)
    x = ((data["images"].astype(np.float32) / 255 - 0.5) / 0.5)[:, None]
    np.savez(target, input=x, labels=data["labels"])


def accuracies(models: list[str], test: str) -> dict[str, float]:
    report = run("bench", *models, "--data", test, "--no-int8", "--runs", "1", "--batch-size", "256")
    return {m["model"]: m["modes"]["fp32"]["accuracy"] for m in report["models"]}


def ort_accuracy(model: str, test: str) -> float | None:
    """Top-1 of an exported model in onnxruntime (None when it is not installed)."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    data = np.load(test, allow_pickle=False)
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    x = data["input"]
    top1 = np.concatenate([session.run(None, {"input": x[i:i + 1000]})[0].argmax(1) for i in range(0, len(x), 1000)])
    return float((top1 == data["labels"]).mean())


def weight_bytes(path: str) -> int:
    info = run("info", path)
    return sum(t["stored_bytes"] for t in info["tensors"] if t["kind"] != "other")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared"))
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--models", nargs="+", default=["mnist", "efficientnet", "encoder"],
                        choices=["mnist", "efficientnet", "encoder"])
    parser.add_argument("--epochs", default="4", help="--epochs of the targeted fine-tunes (EfficientNet, encoder)")
    args = parser.parse_args()
    passed = True
    for section in args.models:
        passed &= {"mnist": mnist, "efficientnet": efficientnet, "encoder": encoder}[section](args)
        print(flush=True)
    if not passed:
        sys.exit(1)


def mnist(args) -> bool:
    model = os.path.join(args.shared, "models", "mnist_cnn.onnx")
    if not os.path.exists(model):
        raise SystemExit(f"{model} not found: this benchmark needs ../shared")
    with tempfile.TemporaryDirectory(dir=args.workdir) as work:
        train, test = os.path.join(work, "train.npz"), os.path.join(work, "test.npz")
        to_npz(os.path.join(args.shared, "data", "mnist_train10k.npz"), train)
        to_npz(os.path.join(args.shared, "data", "mnist_test.npz"), test)
        out = {k: os.path.join(work, f"{k}.dcz") for k in
               ("all", "p", "pq", "pqh", "p_no", "pq_no", "pqh_no", "paper")}

        start = time.perf_counter()
        compressed = run("compress", model, "-o", out["all"], "--train", train)
        compress_s = time.perf_counter() - start
        pruned = run("prune", model, "-o", out["p"], "--train", train)
        run("share", out["p"], "-o", out["pq"], "--train", train)
        run("huffman", out["pq"], "-o", out["pqh"])
        if open(out["all"], "rb").read() != open(out["pqh"], "rb").read():  # reported, not fatal: the figures
            print("note: compress --train and its stages run one by one gave different bytes")

        # the same per-layer sparsities and bits, without retraining
        layers = [f"--layer-sparsity={r['name']}={r['sparsity']}" for r in pruned["layers"]]
        run("prune", model, "-o", out["p_no"], *layers, "--index-bits", "conv=5,fc=8")
        run("share", out["p_no"], "-o", out["pq_no"], "--bits", "4")
        run("huffman", out["pq_no"], "-o", out["pqh_no"])
        run("compress", model, "-o", out["paper"], "--sparsity", "conv=0.6,fc=0.9", "--bits", "conv=8,fc=5")

        run("export", out["all"], "-o", os.path.join(work, "all.onnx"))
        exported_top1 = ort_accuracy(os.path.join(work, "all.onnx"), test)
        acc = accuracies([model, *(out[k] for k in ("p", "pq", "pqh", "p_no", "pq_no", "pqh_no", "paper"))], test)
        original = weight_bytes(model)
        ratio = {k: original / weight_bytes(out[k]) for k in ("p", "pq", "pqh", "p_no", "pq_no", "pqh_no", "paper")}

    base = acc[model]
    print(f"mnist_cnn.onnx: {original:,} weight bytes, MNIST top-1 {100 * base:.2f} % (10k test)\n")
    print(f"{'':44}{'weights ratio':>14}{'top-1':>9}{'drop':>8}")
    rows = [("original", 1.0, base)]
    for label, key in (("prune --train (P)", "p"), ("+ share --train (P+Q)", "pq"), ("+ huffman (P+Q+H)", "pqh"),
                       ("same sparsity and bits, no retraining: P", "p_no"), ("  P+Q", "pq_no"),
                       ("  P+Q+H", "pqh_no"), ("paper's settings, no retraining (P+Q+H)", "paper")):
        rows.append((label, ratio[key], acc[out[key]]))
    rows.append(("NNCodec / DeepCABAC (issue's measurement)", NNCODEC[0], NNCODEC[1]))
    for label, r, a in rows:
        print(f"{label:44}{r:>13.1f}x{100 * a:>8.2f}%{100 * (base - a):>7.2f}")
    totals = compressed["totals"]
    print(f"\ncompress --train: {compress_s:.0f} s wall; weights {totals['ratio_weights']}x, all tensors "
          f"{totals['ratio_tensors']}x, file {os.path.getsize(model) / compressed['bytes']:.1f}x "
          f"({compressed['bytes']:,} bytes)")
    print("per layer:")
    for r in compressed["layers"]:
        print(f"  {r['name']:14}{r['weights']:>9,} weights  kept {100 * r['kept_fraction']:5.1f}%  "
              f"{r['bytes_pqh']:>7,} B  {r['ratio']:>7.1f}x  value {r['value_bits_per_kept_weight']:.2f} b  "
              f"index {r['index_bits_per_kept_weight']:.2f} b")
    print("training (validation: none given):")
    for h in compressed["training"]:
        print(f"  {h['phase']:12} loss {h.get('loss', '-')}")
    ratios = (totals["ratio_weights"], totals["ratio_tensors"])
    file_ratio = os.path.getsize(model) / compressed["bytes"]
    passed = (min(ratios) >= BAR_RATIO and file_ratio >= BAR_FILE and exported_top1 is not None
              and exported_top1 >= BAR_TOP1)
    top1 = "onnxruntime not installed" if exported_top1 is None else f"{100 * exported_top1:.2f} %"
    print(f"\nbar: >= {BAR_RATIO}x (weights {ratios[0]}x, all tensors {ratios[1]}x), whole file >= {BAR_FILE}x "
          f"({file_ratio:.1f}x) at >= {100 * BAR_TOP1:.2f} % "
          f"top-1 in onnxruntime on the exported model ({top1}): {'passed' if passed else 'MISSED'}")
    return passed


# ---------------------------------------------------------------------------------------------
# Issue 15: EfficientNet-Lite0 and a transformer encoder, fine-tuned towards a target

EFFNET_BAR = (15.0, 95.0, 900.0)  # whole-file ratio, top-1 agreement %, seconds
ENCODER_COSINE = 0.99


def targeted_rows(model: str, rows: list[tuple[str, list[str]]], evaluation: dict, work: str) -> list[dict]:
    """Run each (label, compress options) on `model`, export it, judge it in onnxruntime against
    the original on `evaluation` (feeds): ratio, agreement, cosine, seconds."""
    import post_training as pt
    import real_models as rm

    reference = ort_outputs(model, evaluation)
    out = []
    for k, (label, options) in enumerate(rows):
        dcz, exported = os.path.join(work, f"t{k}.dcz"), os.path.join(work, f"t{k}.onnx")
        print(f"  running: compress {' '.join(os.path.basename(o) if os.sep in o else o for o in options)}",
              file=sys.stderr, flush=True)
        seconds, report, error = rm.deepcompress("compress", model, "-o", dcz, *options)
        if error is None:
            _, _, error = rm.deepcompress("export", dcz, "-o", exported)
        if error is not None:
            out.append({"label": label, "error": error, "seconds": seconds})
            continue
        judged = pt.judge(ort_outputs(exported, evaluation), reference, None)
        out.append({"label": label, "seconds": seconds, "ratio": os.path.getsize(model) / os.path.getsize(dcz),
                    "bytes": os.path.getsize(dcz), **judged, "report": report})
    return out


def ort_outputs(path: str, feeds: dict, batch: int = 32) -> np.ndarray:
    """The first output of `path` in onnxruntime on `feeds` (samples on axis 0), in batches."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    n = len(next(iter(feeds.values())))
    return np.concatenate([session.run(None, {k: v[i:i + batch] for k, v in feeds.items()})[0]
                           for i in range(0, n, batch)])


def print_rows(rows: list[dict], quoted=()) -> None:
    print(f"{'':58}{'file ratio':>11}{'agreement':>11}{'cosine':>9}{'time':>8}")
    for r in rows:
        if "error" in r:
            print(f"{r['label']:58}  failed: {r['error']}")
            continue
        print(f"{r['label']:58}{r['ratio']:>10.2f}x{r['agreement']:>10.1f}%{r['cosine']:>9.4f}{r['seconds']:>7.0f}s")
    for label, ratio, agreement, cosine in quoted:
        print(f"{label:58}{ratio:>10.2f}x{agreement:>10.1f}%{cosine:>9.3f}{'':>8}")


def efficientnet(args) -> bool:
    import post_training as pt

    model = os.path.join(args.shared, "models", "efficientnet_lite0.onnx")
    if not os.path.exists(model):
        print(f"EfficientNet-Lite0: {model} not found: skipped")
        return True
    with tempfile.TemporaryDirectory(dir=args.workdir) as work:
        setup = pt.prepare("efficientnet", work, quick=False, headline=True)
        evaluation = {"input": np.load(setup.eval)["input"]}
        rows = targeted_rows(model, [
            ("compress --train calib --min-agreement 95", ["--train", setup.calib, "--min-agreement", "95",
                                                           "--epochs", args.epochs]),
            ("compress --calibrate calib --min-agreement 95 (no retraining)",
             ["--calibrate", setup.calib, "--min-agreement", "95"])], evaluation, work)
    print(f"EfficientNet-Lite0 (ImageNet-trained), {len(evaluation['input'])} natural_images_eval crops, "
          "judged in onnxruntime against the original")
    print_rows(rows, [(f"{label} (issue 13's measurement)", ratio, agreement, cosine)
                      for label, ratio, agreement, cosine in NNCODEC_EFFNET])
    trained = rows[0]
    if "report" in trained:
        for t in trained["report"].get("training") or []:
            tuned, plain = t["as_fine_tuned"], t["as_rounded"]
            print(f"  fine-tune: budget {t['budget']}: held-out agreement / cosine as rounded "
                  f"{100 * plain['top1_agreement']:.1f} % / {plain['cosine']:.4f} ({plain['bytes']:,} B), fine-tuned "
                  f"{100 * tuned['top1_agreement']:.1f} % / {tuned['cosine']:.4f} ({tuned['bytes']:,} B): "
                  f"{'met' if t['met'] else 'missed'}; {t['steps']} steps, {t['samples_per_s']} images/s, "
                  f"{t['seconds']:.0f} s")
    ratio, agreement, seconds = EFFNET_BAR
    passed = "error" not in trained and trained["ratio"] >= ratio and trained["agreement"] >= agreement \
        and trained["seconds"] <= seconds
    print(f"bar: >= {ratio:g}x at >= {agreement:g} % agreement within {seconds / 60:g} min: "
          f"{'passed' if passed else 'MISSED'}")
    return passed


NNCODEC_EFFNET = [("NNCodec qp -38", 4.7, 95.0, 0.994), ("NNCodec qp -34", 5.5, 91.0, 0.979),
                  ("NNCodec qp -30", 6.6, 67.0, 0.929), ("NNCodec qp -26", 8.1, 44.0, 0.719)]


def encoder(args) -> bool:
    import real_models as rm

    spec = rm.BY_NAME["minilm_l3"]
    try:
        model = str(rm.fetch(spec))
    except Exception as e:  # no registry access: the section is skipped, not failed
        print(f"transformer encoder: could not fetch {spec.package}: {e}")
        return True
    with tempfile.TemporaryDirectory(dir=args.workdir) as work:
        train, evaluation = os.path.join(work, "tokens_train.npz"), rm.token_inputs(128, np.random.default_rng(1))
        np.savez(train, **rm.token_inputs(256, np.random.default_rng(0)))
        cosine = str(ENCODER_COSINE)
        rows = targeted_rows(model, [
            (f"compress --calibrate tokens --min-cosine {cosine} (before)", ["--calibrate", train, "--min-cosine", cosine]),
            (f"compress --train tokens --min-cosine {cosine} (after)", ["--train", train, "--min-cosine", cosine,
                                                                       "--epochs", args.epochs])], evaluation, work)
    print(f"{spec.task}: 256 token sequences to compress with, 128 others to judge, in onnxruntime")
    print_rows(rows)
    return all("error" not in r for r in rows)




if __name__ == "__main__":
    main()
