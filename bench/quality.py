"""Quality at equal parameter count: slicing, layer removal, both, and greedy removal, on the demo model.

For each budget (fraction of the dense model's parameters removed) every method builds its best plan that
removes at least that much, chooses among its own variants on the VALIDATION split, and is reported on the
TEST split (perplexity, and accuracy on the offline `mmlu_exemplars` task). Parameters are counted as the model
stores them, the head kept tied to the embedding (`dynslice.counts.sliced_parameters`).

The pipeline's planners are among the methods: `constant` and `dynamic` are `plan.planner` constant / dynamic,
`shortgpt` is `plan.planner: removal`, `greedy_sublayers` is `plan.planner: greedy` (its default `units:
sublayers`) and `greedy_layers` is the same with `units: layers`.

Methods (each gives a `MixedPlan`: layers/sublayers removed + an optional SlicePlan of the rest):
  constant        SliceGPT: one width for every layer, the widest that meets the budget
  dynamic         the paper's mapping of BI scores, variation a = v * t for each v in --variations (best on val)
  shortgpt        ShortGPT: the fewest lowest-BI layers that meet the budget
  depth_width     remove the k lowest-BI layers, then constant slicing of the rest (k chosen on val)
  spectrum        slicing widths keeping an equal fraction of each layer input's variance (dense spectra)
  oneshot_layers  the layers whose removal ALONE costs the least validation loss (no re-measuring)
  oneshot_sublayers the same for sublayers: greedy_removal over the one-shot losses taken as additive
  greedy_layers   whole layers removed greedily by measured validation loss (greedy_removal, kinds=layer)
  greedy_sublayers attention / MLP sublayers or whole layers removed greedily by measured validation loss
  greedy_sublayers_kl the same, measuring KL(dense || reduced) over the vocabulary instead of the NLL

    python bench/quality.py [--budgets 0.05 0.10 0.15] [--nsamples 32] [--val-windows 16]
        [--test-windows 64] [--search-windows 8] [--methods ...] [--cache .research-cache] [--acc-limit N]

Expensive intermediate results (BI scores, spectra, every measured loss of the greedy searches, every
perplexity and accuracy) are cached under --cache, keyed by what changes them, so a rerun only computes what is
new. Prints JSON and a table, and saves bench/results/quality.json for bench/report.py.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import torch

from common import emit
from dynslice import planners
from dynslice.architectures import spec_for
from dynslice.calibration import as_calibration
from dynslice.capture import capture_layer_inputs, move_to, zero_pads
from dynslice.compress import slice_model
from dynslice.counts import dense_parameters, sliced_parameters
from dynslice.data import calibration_windows, load_corpus, resolve_data
from dynslice.evaluation.perplexity import perplexity, token_stream, windows_of
from dynslice.evaluation.zeroshot import zero_shot
from dynslice.models import resolve_model
from dynslice.pca import Covariance
from dynslice.plan import SlicePlan
from dynslice.planners_mixed import (LAYER, HeldOutLoss, MixedPlan, apply_removal, greedy_removal,
                                     remaining_config)
from dynslice.removal import layers_to_remove
from dynslice.scoring import score_all_metrics

ROOT = Path(__file__).resolve().parent.parent
METHODS = ("constant", "dynamic", "shortgpt", "depth_width", "spectrum", "oneshot_layers", "oneshot_sublayers",
           "greedy_layers", "greedy_sublayers", "greedy_sublayers_kl")
DEFAULT_METHODS = ("constant", "dynamic", "shortgpt", "depth_width", "spectrum", "greedy_layers",
                   "greedy_sublayers")


# -- parameter budgets ------------------------------------------------------------------------------------
def tied_param_count(plan: MixedPlan, config) -> int:
    """What the model of `plan` stores with a tied head (issue 11 item 1): today's untied count - V d_0 + D d_L."""
    return plan.num_parameters(config)  # MixedPlan counts slicing with tied_sliced_parameters


def limit_of(config, budget: float) -> int:
    """Most parameters a plan may keep to remove at least `budget` of the dense model."""
    dense = dense_parameters(config)
    return dense - math.ceil(budget * dense - 1e-9)


def widest_constant(config, limit: int, round_to: int) -> SlicePlan:
    """SliceGPT's constant plan: the widest uniform width (a multiple of round_to) whose tied count fits."""
    layers, hidden = config.num_hidden_layers, config.hidden_size
    for width in range(hidden - hidden % round_to, 0, -round_to):
        plan = SlicePlan.from_widths([width] * layers + [hidden])
        if sliced_parameters(plan, config) <= limit:
            return plan
    raise ValueError(f"no constant width fits {limit} parameters")


def least_slicing(build, config, limit: int, high: float, steps: int = 40) -> tuple[SlicePlan, float]:
    """Bisection on a plan family's mean slicing t: the least t whose tied count fits `limit`."""
    lo, hi = 0.0, high
    best = build(hi)
    if sliced_parameters(best, config) > limit:
        raise ValueError(f"even t = {high} keeps more than {limit} parameters")
    for _ in range(steps):
        mid = 0.5 * (lo + hi)
        plan = build(mid)
        if sliced_parameters(plan, config) <= limit:
            hi, best = mid, plan
        else:
            lo = mid
    return best, hi


def dynamic_plan(scores, config, limit: int, ratio: float, round_to: int, max_slice: float = 0.9) -> SlicePlan:
    """The paper's mapping with variation a = ratio * t, at the least t that fits (dynslice.planners.dynamic)."""
    def build(t: float) -> SlicePlan:
        p = planners.dynamic(scores, t, ratio * t, config=config, budget="mean", max_slice=max_slice,
                             round_to=round_to)
        return SlicePlan.from_widths(p.widths, p.mid)
    return least_slicing(build, config, limit, max_slice)[0]


# -- spectra (loser; kept for the record) -----------------------------------------------------------------
@torch.no_grad()
def input_spectra(model, calibration, batch_size: int = 8) -> torch.Tensor:
    """Eigenvalues (descending, float64) of the covariance of each layer's input on the dense model: [L, D]."""
    spec = spec_for(model)
    calib = as_calibration(calibration, vocab_size=model.config.vocab_size)
    cpu = torch.device("cpu")
    sig = capture_layer_inputs(model, spec, calib, batch_size, cpu, cpu)
    layers = model.get_submodule(spec.layers)
    out = []
    for layer in layers:
        cov = Covariance(model.config.hidden_size, cpu)
        for b, (x, mask, kw) in enumerate(zip(sig.inputs, sig.masks, sig.kwargs)):
            cov.add(x, mask)
            y = layer(x, **move_to(kw, cpu))
            sig.inputs[b] = zero_pads(y[0] if isinstance(y, tuple) else y, mask)
        out.append(torch.linalg.eigvalsh(cov.matrix()).flip(0).clamp_min(0.0))
    return torch.stack(out)


def spectrum_plan(spectra: torch.Tensor, config, limit: int, round_to: int) -> SlicePlan:
    """Widths keeping the same fraction f of every layer input's variance: the largest f whose plan fits."""
    hidden = config.hidden_size
    cum = spectra.cumsum(1) / spectra.sum(1, keepdim=True)  # [L, D] variance kept by the first d components

    def build(f: float) -> SlicePlan:
        widths = []
        for row in cum:
            d = int(torch.searchsorted(row, torch.tensor(f, dtype=row.dtype)).item()) + 1
            widths.append(min(hidden, max(round_to, math.ceil(d / round_to) * round_to)))
        return SlicePlan.from_widths(widths + [hidden])

    # f = 1 - t: the least t that fits is the largest share of variance that does
    return least_slicing(lambda t: build(1.0 - t), config, limit, 1.0)[0]


# -- caching ------------------------------------------------------------------------------------------------
def digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:20]


class Store:
    """JSON files and a JSON-lines table under one folder; a torn last line is ignored (recomputed)."""

    def __init__(self, folder: Path):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.table_path = folder / "evaluations.jsonl"
        self.table: dict[str, dict] = {}
        if self.table_path.exists():
            for line in self.table_path.read_text().splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue
                self.table[row["key"]] = row

    def get(self, key: str) -> dict | None:
        return self.table.get(key)

    def put(self, key: str, row: dict) -> None:
        row = dict(row, key=key)
        self.table[key] = row
        with self.table_path.open("a") as f:
            f.write(json.dumps(row) + "\n")

    def load_json(self, name: str):
        path = self.folder / name
        if path.exists():
            try:
                return json.loads(path.read_text())
            except json.JSONDecodeError:
                return None
        return None

    def save_json(self, name: str, value) -> None:
        tmp = self.folder / (name + ".tmp")
        tmp.write_text(json.dumps(value))
        os.replace(tmp, self.folder / name)


class CachedLosses(dict):
    """greedy_removal's `losses` dict, persisted: {frozenset(units): loss} <-> a JSON list of [units, loss]."""

    def __init__(self, store: Store, name: str):
        super().__init__()
        self.store, self.name = store, name
        for units, loss in store.load_json(name) or []:
            super().__setitem__(frozenset((int(i), k) for i, k in units), float(loss))

    def __setitem__(self, key, value):
        super().__setitem__(key, value)
        self.store.save_json(self.name, [[sorted(map(list, k)), v] for k, v in self.items()])


# -- the experiment -----------------------------------------------------------------------------------------
class Experiment:
    def __init__(self, args):
        self.args = args
        lm = resolve_model(args.model, dtype="float32")
        self.model, self.tok, self.model_key = lm.model.eval(), lm.tokenizer, lm.identity.key
        self.config = self.model.config
        self.dense = dense_parameters(self.config)
        self.store = Store(Path(args.cache))
        corpus = {s: load_corpus(resolve_data(args.data, s)) for s in ("validation", "test")}
        self.ids = {s: token_stream(self.tok, c.eval_text) for s, c in corpus.items()}
        # the text itself decides a perplexity: keyed by its content, not by how the data layer names a source
        self.data_key = {s: "text:" + hashlib.sha256(c.eval_text.encode()).hexdigest() for s, c in corpus.items()}
        self._calib = None
        self.calib_key = {"data": args.data, "n": args.nsamples, "seqlen": args.seqlen, "seed": args.seed}

    # inputs shared by methods, cached
    def calibration(self):
        if self._calib is None:
            sample = calibration_windows(self.args.data, self.tok, self.args.nsamples, self.args.seqlen,
                                         split="train", seed=self.args.seed)
            self._calib = sample.as_dict()
        return self._calib

    def scores(self) -> list[float]:
        name = f"scores-{digest([self.model_key, self.calib_key])}.json"
        values = self.store.load_json(name)
        if values is None:
            t = time.perf_counter()
            values = list(score_all_metrics(self.model, self.calibration(), metrics=("cosine",),
                                            progress=False)["cosine"].values)
            self.store.save_json(name, values)
            log(f"BI scores ({self.args.nsamples} windows): {time.perf_counter() - t:.0f} s")
        return values

    def spectra(self) -> torch.Tensor:
        path = self.store.folder / f"spectra-{digest([self.model_key, self.calib_key])}.pt"
        if path.exists():
            return torch.load(path)
        t = time.perf_counter()
        values = input_spectra(self.model, self.calibration())
        torch.save(values, path)
        log(f"input spectra: {time.perf_counter() - t:.0f} s")
        return values

    def search_losses(self, criterion: str = "nll") -> CachedLosses:
        key = digest([self.model_key, self.data_key["validation"], self.args.search_windows, self.args.seqlen,
                      criterion])
        return CachedLosses(self.store, f"losses-{key}.json")

    def measure(self, criterion: str = "nll"):
        windows = windows_of(self.ids["validation"], self.args.seqlen, self.args.search_windows)
        return HeldOutLoss(self.model, windows, criterion=criterion)

    # evaluation
    def eval_key(self, plan: MixedPlan, split: str) -> str:
        """What a perplexity depends on: model, plan (widths, removals), calibration if sliced, data, windows."""
        plan_key = {k: v for k, v in plan.to_dict().items() if k != "provenance"}
        if plan_key["slicing"] is not None:
            plan_key["slicing"] = {"widths": plan_key["slicing"]["widths"], "mid": plan_key["slicing"]["mid"]}
        windows = self.args.val_windows if split == "validation" else self.args.test_windows
        calib = self.calib_key if plan.slicing is not None else None
        return digest([self.model_key, plan_key, calib, self.args.seqlen, self.data_key[split], windows])

    def evaluate(self, plan: MixedPlan, splits: tuple[str, ...]) -> dict:
        out, model, built = {}, None, 0.0
        for split in splits:
            key = self.eval_key(plan, split)
            row = self.store.get(key)
            if row is None:
                if model is None:
                    t = time.perf_counter()
                    model = self.build(plan)
                    built = time.perf_counter() - t
                t = time.perf_counter()
                windows = self.args.val_windows if split == "validation" else self.args.test_windows
                ppl = perplexity(model, self.ids[split], self.args.seqlen, max_windows=windows, batch_size=8,
                                 progress=False).perplexity
                row = {"ppl": ppl, "seconds": time.perf_counter() - t, "build_seconds": built}
                self.store.put(key, row)
            out[split] = row["ppl"]
        return out

    def accuracy(self, plan: MixedPlan) -> float:
        """Mean accuracy on the offline MMLU exemplar task (the same items for every plan)."""
        key = digest([self.eval_key(plan, "test"), "mmlu_exemplars", self.args.acc_limit])
        row = self.store.get(key)
        if row is None:
            t = time.perf_counter()
            result = zero_shot(self.build(plan), self.tok, ["mmlu_exemplars"], batch_size=8,
                               limit=self.args.acc_limit or None)
            row = {"acc": result.mean_acc, "seconds": time.perf_counter() - t}
            self.store.put(key, row)
        return row["acc"]

    def build(self, plan: MixedPlan):
        model = apply_removal(copy.deepcopy(self.model), plan)
        if plan.slicing is not None:
            slice_model(model, self.calibration(), plan.slicing, batch_size=8, progress=False)
        return model

    def describe(self, plan: MixedPlan, label: str) -> dict:
        params = tied_param_count(plan, self.config)
        slicing = None
        if plan.slicing is not None:
            slicing = plan.slicing.mean_slicing(self.config.hidden_size)
        return {"label": label, "parameters": params, "removed_fraction": 1.0 - params / self.dense,
                "mean_slicing": slicing, "plan": {k: v for k, v in plan.to_dict().items() if k != "provenance"}}

    # methods: each returns candidate (label, plan) pairs; the best on validation is reported
    def candidates(self, method: str, budget: float) -> list[tuple[str, MixedPlan]]:
        a, config = self.args, self.config
        limit = limit_of(config, budget)
        if method == "constant":
            return [("constant", MixedPlan(slicing=widest_constant(config, limit, a.round_to)))]
        if method == "dynamic":
            return [(f"dynamic a={v:g}t", MixedPlan(slicing=dynamic_plan(self.scores(), config, limit, v, a.round_to)))
                    for v in a.variations]
        if method == "shortgpt":
            return [("shortgpt", MixedPlan(removed=layers_to_remove(self.scores(), config, target=budget)))]
        if method == "depth_width":
            most = len(layers_to_remove(self.scores(), config, target=budget))
            ks = sorted({most // 2, most - 1} - {0}) if a.depth_width_k is None else \
                [k for k in a.depth_width_k if 0 < k < most]
            out = []
            for k in ks:
                removed = layers_to_remove(self.scores(), config, n=k)
                rest = remaining_config(config, removed)
                out.append((f"remove {k} + constant", MixedPlan(removed=removed,
                                                                slicing=widest_constant(rest, limit, a.round_to))))
            return out
        if method == "spectrum":
            return [("equal variance", MixedPlan(slicing=spectrum_plan(self.spectra(), config, limit, a.round_to)))]
        if method in ("oneshot_layers", "oneshot_sublayers"):
            kinds = (LAYER,) if method == "oneshot_layers" else ("attention", "mlp", "layer")
            measure = OneShot(self.search_losses(), _Lazy(self.measure))
            return [(method, greedy_removal(measure, config, budget, kinds=kinds, progress=False))]
        if method in ("greedy_layers", "greedy_sublayers", "greedy_sublayers_kl"):
            criterion = "kl" if method.endswith("_kl") else "nll"
            losses = self.search_losses(criterion)
            measure = _Lazy(lambda: self.measure(criterion))
            kinds = (LAYER,) if method == "greedy_layers" else ("attention", "mlp", "layer")
            t = time.perf_counter()
            plan = greedy_removal(measure, config, budget, kinds=kinds, losses=losses, progress=False)
            seconds = time.perf_counter() - t
            log(f"{method} {budget:g}: {plan.provenance['measurements']} new measurements, {seconds:.0f} s")
            return [(method, plan)]
        raise ValueError(method)


class _Lazy:
    """Builds HeldOutLoss (a pass over the search windows) only if a loss is not already cached."""

    def __init__(self, make):
        self.make, self.value = make, None

    def __call__(self, removed, extra=frozenset()):
        if self.value is None:
            self.value = self.make()
        return self.value(removed, extra)


class OneShot:
    """A measure that adds up one-shot losses: loss(R) = loss({}) + sum over R's pieces of the increase each
    piece causes ALONE (a layer missing both sublayers is one piece). greedy_removal over it ranks candidates
    by their one-shot cost per parameter and never re-measures (the ablation of the greedy search)."""

    def __init__(self, losses: dict, measure):
        self.losses, self.measure = losses, measure
        self.base = self._alone(frozenset())

    def _alone(self, units: frozenset) -> float:
        if units not in self.losses:
            self.losses[units] = float(self.measure(frozenset(), units))
        return self.losses[units]

    def __call__(self, removed, extra=frozenset()):
        units = removed | extra
        total = self.base
        for i in {i for i, _ in units}:
            piece = frozenset(u for u in units if u[0] == i)
            total += self._alone(piece) - self.base
        return total


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run(args) -> dict:
    start = time.perf_counter()
    ex = Experiment(args)
    dense_ppl = ex.evaluate(MixedPlan(), ("validation", "test"))
    result = {"benchmark": "planner_search", "model": args.model, "data": args.data,
              "settings": {k: v for k, v in vars(args).items() if k not in ("out",)},
              "dense": {"parameters": ex.dense, "validation_ppl": dense_ppl["validation"],
                        "test_ppl": dense_ppl["test"], "test_acc": ex.accuracy(MixedPlan())},
              "budgets": {}}
    for budget in args.budgets:
        per_method = {}
        for method in args.methods:
            t = time.perf_counter()
            tried = []
            for label, plan in ex.candidates(method, budget):
                row = ex.describe(plan, label)
                row["validation_ppl"] = ex.evaluate(plan, ("validation",))["validation"]
                tried.append((row, plan))
                log(f"{budget:g} {method} {label}: {row['removed_fraction']:.4f} removed, "
                    f"val {row['validation_ppl']:.2f}")
            best_row, best_plan = min(tried, key=lambda rp: rp[0]["validation_ppl"])
            best_row = dict(best_row, test_ppl=ex.evaluate(best_plan, ("test",))["test"],
                            test_acc=ex.accuracy(best_plan))
            per_method[method] = {"chosen": best_row, "candidates": [r for r, _ in tried],
                                  "seconds": time.perf_counter() - t}
            log(f"{budget:g} {method}: {best_row['label']} test {best_row['test_ppl']:.2f}")
        add_auto(per_method)
        result["budgets"][f"{budget:g}"] = per_method
    result["wall_seconds"] = time.perf_counter() - start
    result["platform"] = {"python": platform.python_version(), "torch": torch.__version__,
                          "threads": torch.get_num_threads(), "machine": platform.machine()}
    return result


PIPELINE_NAMES = {"shortgpt": "removal (ShortGPT)", "greedy_layers": "greedy, units layers",
                  "greedy_sublayers": "greedy (sublayers)", "auto": "auto, budget params (pipeline)"}
AUTO_CANDIDATES = ("dynamic", "shortgpt", "greedy_sublayers")  # flows.compress.candidates with budget: params


def add_auto(per_method: dict) -> None:
    """What `planner: auto, budget: params` delivers, added to one budget's methods: the best of its candidates
    on validation (nothing is measured: the candidates were)."""
    per_method.pop("auto", None)
    tried = [m for m in AUTO_CANDIDATES if m in per_method]
    if len(tried) == len(AUTO_CANDIDATES):
        best = min(tried, key=lambda m: per_method[m]["chosen"]["validation_ppl"])
        chosen = dict(per_method[best]["chosen"], label=f"{PIPELINE_NAMES.get(best, best)} (on validation)")
        per_method["auto"] = {"chosen": chosen, "candidates": [], "seconds": 0.0}


def rederive() -> int:
    """Rebuild the derived parts of bench/results/quality.json (the auto row, notes, plot, table) from its measured
    rows, keeping the machine and date of the measurement: for a change of the pipeline's candidates or labels."""
    from common import RESULTS, table

    path = RESULTS / "quality.json"
    result = json.loads(path.read_text())
    for per_method in result["budgets"].values():
        add_auto(per_method)
    result["plot"], result["notes"] = plot_points(result), notes_of(result)
    result["table"] = rows_of(result)
    result["rederived"] = time.strftime("%Y-%m-%d")
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))
    print(table(result["table"]), file=sys.stderr)
    return 0


def rows_of(result: dict) -> list[list[str]]:
    """The report's table: one row per budget and method (the dense model first)."""
    head = ["budget", "method", "chosen on validation", "parameters", "removed", "mean slicing", "val ppl",
            "test ppl", "test acc"]
    d = result["dense"]
    rows = [head, ["-", "dense", "", f"{d['parameters']:,}", "0.00%", "-", f"{d['validation_ppl']:.2f}",
                   f"{d['test_ppl']:.2f}", f"{d['test_acc']:.3f}"]]
    for budget, methods in result["budgets"].items():
        best = min(info["chosen"]["test_ppl"] for info in methods.values())
        for method, info in methods.items():
            c = info["chosen"]
            slicing = "-" if c["mean_slicing"] is None else f"{c['mean_slicing']:.3f}"
            ppl = f"{c['test_ppl']:.2f}" + (" (best)" if c["test_ppl"] == best else "")
            rows.append([f"{100 * float(budget):g}%", PIPELINE_NAMES.get(method, method), c["label"],
                         f"{c['parameters']:,}", f"{100 * c['removed_fraction']:.2f}%", slicing,
                         f"{c['validation_ppl']:.2f}", ppl, f"{c['test_acc']:.3f}"])
    return rows


def notes_of(result: dict) -> list[str]:
    """What the table says, per budget (computed from it), and how to read it."""
    out = []
    for budget, methods in result["budgets"].items():
        ranked = sorted(methods.items(), key=lambda kv: kv[1]["chosen"]["test_ppl"])
        out.append(f"At {100 * float(budget):g}% removed, test perplexity from best to worst: " + ", ".join(
            f"{PIPELINE_NAMES.get(m, m)} {info['chosen']['test_ppl']:.2f}" for m, info in ranked) + ".")
    out.append("Removing whole layers cannot hit a budget exactly (one SmolLM2 layer is 2.6% of the parameters), "
               "so the removal methods remove at least as much as the slicing methods, never less: the "
               "`parameters` column is exact. Accuracy is the offline MMLU exemplar task (the same "
               f"{result['settings'].get('acc_limit') or 282} items for every model); for a 135M model it stays "
               "near chance (25%) and does not separate the methods; perplexity does.")
    out.append(f"The greedy searches measure their losses on the first {result['settings'].get('search_windows')} "
               "validation windows (`--search-windows`); the pipeline's `greedy` planner measures on the selection "
               "data (`selection.windows`, 16 by default), so its plans can differ from these.")
    if result.get("rederived"):
        out.append(f"The auto row, labels and notes were rederived on {result['rederived']} from the measured rows "
                   "(`python bench/quality.py --rederive`, nothing re-measured) when `greedy` became a sublayer "
                   "planner of the pipeline and so an `auto` candidate.")
    return out


def plot_points(result: dict) -> dict:
    """bench/report.py's plot: test perplexity against the fraction removed, one line per method."""
    methods: dict[str, list] = {}
    for per in result["budgets"].values():
        for method, info in per.items():
            if method == "auto":
                continue  # one of the pipeline's lines, chosen on validation: already drawn
            c = info["chosen"]
            methods.setdefault(PIPELINE_NAMES.get(method, method), []).append([c["removed_fraction"], c["test_ppl"]])
    return {"methods": methods, "dense": result["dense"]["test_ppl"]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m", help="model source (default: the demo model)")
    p.add_argument("--data", default="wiki")
    p.add_argument("--budgets", type=float, nargs="+", default=[0.05, 0.10, 0.15])
    p.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS), choices=METHODS)
    p.add_argument("--nsamples", type=int, default=32, help="calibration windows (train split)")
    p.add_argument("--seqlen", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--val-windows", type=int, default=16, help="validation windows: choice among variants")
    p.add_argument("--test-windows", type=int, default=64, help="test windows: the reported perplexity")
    p.add_argument("--search-windows", type=int, default=8,
                   help="first validation windows the greedy searches measure their losses on")
    p.add_argument("--variations", type=float, nargs="+", default=[0.5, 1.0],
                   help="the paper's variation a as a fraction of t")
    p.add_argument("--depth-width-k", type=int, nargs="*", default=None,
                   help="layers removed before slicing (default: n // 2 and n - 1, n = ShortGPT's count)")
    p.add_argument("--round-to", type=int, default=1, help="slicing widths are multiples of this")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cache", default=str(ROOT / ".research-cache"))
    p.add_argument("--acc-limit", type=int, default=100,
                   help="MMLU exemplar items each model answers (the same items for all; 0: all 282)")
    p.add_argument("--out", default=None, help="write the JSON here too")
    p.add_argument("--no-save", action="store_true", help="do not save bench/results/quality.json")
    p.add_argument("--rederive", action="store_true",
                   help="measure nothing: rebuild the auto row, notes, plot and table of the saved result")
    args = p.parse_args()
    if args.rederive:
        return rederive()
    torch.set_num_threads(args.threads)
    result = run(args)
    result["plot"], result["notes"] = plot_points(result), notes_of(result)
    text = json.dumps(result, indent=2)
    emit("quality", {k: v for k, v in result.items() if k != "benchmark"}, rows_of(result), save=not args.no_save)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
