"""Retraining towards a quality target: `compress --train DATA --min-agreement 95` (or
--min-cosine, --max-accuracy-drop).

Without retraining (planning.py) a plan must meet the target as rounded; with it, a plan can go
further and let training win back what the rounding lost.  The steps:

1. **Plan.** planning.Planner on the training data: statistics, sensitivities, candidates.  The
   samples it holds out from fitting the rounding are held out from training too, and every
   figure is measured on them, so the file is judged on data it was neither fitted nor trained to.
2. **Push.** The planner's allocation at a budget PUSH times the one its own search starts at:
   each layer loses most where its sensitivity says that costs least.
3. **Fine-tune on the grid.** Every planned weight keeps its plan's mask and per-row step;
   training moves float shadows that each forward pass rounds onto the grid (straight-through),
   starting from the plan's GPTQ codes; biases keep the planner's correction.  The loss is
   distillation to the original model's outputs (cross-entropy when the data has labels).
4. **Verify and move.** The plan is judged as rounded and as fine-tuned: the smaller of the two
   that meets the target counts (training can make a plan worse, or its codes dearer to store).
   A plan that meets the target makes the next budget STEP times larger, one that misses it STEP
   times smaller (once bracketed: the geometric mean), for ROUNDS fine-tunes; the smallest met
   file is written.  When none meets it, the planner's own search without retraining decides (so
   a target rounding alone can meet is still met), and its GateFailed says when not even that can.
"""

from __future__ import annotations

import math
import time

import numpy as np

from ..errors import DczError
from .. import planning
from .network import Network
from .retrain import Grid, Trainer, TrainConfig

PUSH = 4.0  # the first budget, times the planner's initial one
# Without --optimizer and --lr: Adam, each step moving a weight by up to FINE_TUNE_LR of its grid
# step (grid weights train in step units, retrain.Grid).  In absolute units no rate suited every
# model: on EfficientNet-Lite0 momentum SGD at 1e-3..1e-2 and Adam at 2e-4 left the plan worse
# than GPTQ's codes alone (held-out agreement 92 % -> 70-87 %), while on the digits MLP Adam at
# 3e-5 changed no code at all.
FINE_TUNE_OPTIMIZER, FINE_TUNE_LR = "adam", 0.05
STEP = 4.0  # how far the budget moves after a met / missed fine-tune
ROUNDS = 4  # fine-tunes tried


def training_samples(evidence: planning.Evidence, judged: np.ndarray | None) -> np.ndarray:
    """Indices into the data file of every sample the planner does not judge on."""
    total = evidence.total or evidence.count
    in_file = planning.spaced(total, planning.VERIFY_SAMPLES) if evidence.total else np.arange(total)
    if judged is None:
        return np.arange(total)
    return np.setdiff1d(np.arange(total), in_file[judged])


class Targeted:
    """One retraining search: a Planner, a Network and a Trainer over the same package."""

    def __init__(self, planner: planning.Planner, train: TrainConfig, progress=None):
        self.planner, self.train = planner, train
        self.network = Network(planner.package, train.logits)
        self.samples = training_samples(planner.evidence, planner.judged)
        if not len(self.samples):
            raise DczError("--train: no samples are left to train on once the judged ones are held out")
        self.trainer = Trainer(self.network, train, progress, samples=self.samples)
        self.original = {name: p.copy() for name, p in self.network.params.items()}
        self.values = {}  # table name -> graph value of each parameter
        for value in self.network.params:
            self.values.setdefault(self.network.table_name[value], value)
        self.layers = {layer.name: layer for layer in planner.layers}

    def attempt(self, settings: dict) -> tuple:
        """((entries, decoded, facts, biases, fidelity, bytes) of `settings` as rounded, the same
        fine-tuned, training history)."""
        planner, net = self.planner, self.network
        entries, decoded, facts, biases = planner.realize(settings)
        rounded = (dict(entries), dict(decoded), dict(facts), biases, planner.verify(decoded, biases),
                   planner.size(entries, biases))
        net.params.update({name: p.copy() for name, p in self.original.items()})
        grids, planned = {}, {}
        for name, weight in decoded.items():
            value, grid = self.values.get(name), planning.linear_grid(self.layers[name], settings[name])
            if value is None or grid is None:
                continue  # not on the loss's path, or not on a linear grid: kept as realized
            steps, levels = grid
            keep = np.ones(weight.shape, bool) if settings[name].density >= 1 else weight != 0
            full = planning.steps_full(self.layers[name], steps).astype(np.float32)
            grids[value] = Grid(full, levels, keep)
            net.params[value] = weight.astype(np.float32)
            planned[value] = (name, steps, grids[value].codes(net.params[value]))
        for value in net.params:  # biases as the planner corrected them, then kept: only the codes train
            table = self.network.table_name[value]
            if value not in grids and table in biases:
                net.params[value] = biases[table].astype(np.float32).reshape(net.params[value].shape)
        self.trainer.lr, self.trainer.halvings = self.train.lr, 0  # each plan from the given rate
        history = self.trainer.fit(grids=grids, frozen=set(net.params) - set(grids), desc="fine-tune")
        moved = False
        for value, (name, steps, start) in planned.items():
            layer, grid = self.layers[name], grids[value]
            codes = grid.codes(self.trainer.shadows[value])
            if np.array_equal(codes, start):
                continue  # no code crossed a rounding boundary: the rounded entry stands
            codes = codes.astype(np.int64)
            moved = True
            sparse_ok = settings[name].density < 1 and planner.scale_codec
            entries[name], decoded[name], facts[name] = planning.encode_codes(layer, codes, grid.keep, steps,
                                                                               sparse_ok)
        if not moved:  # the same file: no second verify
            return rounded, rounded, history
        tuned = (entries, decoded, facts, biases, planner.verify(decoded, biases), planner.size(entries, biases))
        return rounded, tuned, history


def run(package, goal: list, evidence: planning.Evidence, train: TrainConfig, progress=None, jobs: int = 1,
        log=None, model_sha256: str | None = None) -> planning.Outcome:
    """Compress `package` in place: the smallest fine-tuned plan meeting `goal` (see the module)."""
    log = log or (lambda message: None)
    planner = planning.Planner(package, "compress", evidence, progress or planning.no_progress, jobs, log,
                               model_sha256)
    planner.prepare()
    search = Targeted(planner, train, progress)
    budget = planning.initial_budget(goal) * PUSH
    best, tried, seen = None, [], []
    lo = hi = None  # the largest budget met, the smallest missed
    for round_ in range(ROUNDS):
        choice = planning.allocate(planner.layers, budget)
        if choice in seen:
            break
        seen.append(choice)
        settings = planner.settings_for(choice)
        start = time.perf_counter()
        rounded, tuned, history = search.attempt(settings)
        # the fine-tuned codes, or the rounded ones when training made them worse
        met = sorted((r for r in (tuned, rounded) if all(t.met(r[4]) for t in goal)), key=lambda r: r[5])
        entries, decoded, facts, biases, fid, nbytes = met[0] if met else tuned
        passed = bool(met)
        log(f"fine-tune {round_ + 1} (budget {budget:.3g}, {time.perf_counter() - start:.0f} s): {nbytes:,} bytes, "
            f"cosine {fid['cosine']:.5f}, "
            f"agreement {100 * fid['top1_agreement']:.1f} %"
            + (f", accuracy drop {fid['accuracy_drop']:.2f}" if "accuracy_drop" in fid else "")
            + (" -> met" if passed else " -> not met")
            + (" (by the rounded codes, the smaller met)" if met and met[0] is rounded else "")
            + f"; as rounded: cosine {rounded[4]['cosine']:.5f}, agreement {100 * rounded[4]['top1_agreement']:.1f} %")
        tried.append({"budget": round(budget, 6), "bytes": nbytes, "met": passed, "fine_tuned": not met or met[0] is tuned,
                      **planning.rounded(fid), "as_rounded": {**planning.rounded(rounded[4]), "bytes": rounded[5]},
                      "as_fine_tuned": {**planning.rounded(tuned[4]), "bytes": tuned[5]}, "loss": history["loss"],
                      "steps": history["steps"], "samples_per_s": history.get("samples_per_s"),
                      "seconds": round(time.perf_counter() - start, 1)})
        if passed and (best is None or nbytes < best[0]):
            best = (nbytes, settings, entries, facts, biases, fid)
        if passed:
            lo = budget if lo is None else max(lo, budget)
        else:
            hi = budget if hi is None else min(hi, budget)
        budget = math.sqrt(lo * hi) if lo and hi else budget * STEP if passed else budget / STEP
    note = f"fine-tuned on the {len(search.samples)} samples not judged on ({train.epochs:g} epochs a plan)"
    if best is None:  # rounding alone, as without --train (GateFailed when even that cannot)
        best_plain, fid, searched = planner.search(goal)
        if best_plain is None:
            outcome = planning.finish(planner, {}, {}, {}, {}, fid, goal, lossless=True)
            outcome.notes.append("no fine-tuned plan met the target; it is met only losslessly")
        else:
            settings, (entries, _, facts, biases), _, fid = best_plain
            outcome = planning.finish(planner, settings, entries, facts, biases, fid, goal)
            outcome.notes.append("no fine-tuned plan met the target: the plan without retraining is written")
        outcome.verifies = len(searched) + len(tried)
    else:
        _, settings, entries, facts, biases, fid = best
        outcome = planning.finish(planner, settings, entries, facts, biases, fid, goal)
        outcome.notes.append(note)
        outcome.verifies = len(tried)
    outcome.training = tried
    return outcome
