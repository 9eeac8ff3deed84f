"""The pipeline's stages as plain functions (no Prefect): key -> lookup -> compute -> publish.

Each stage takes small JSON-able inputs, computes its cache key from exactly what changes its output
(model identity, data identity, the stage's parameters, the stage's code version), returns the published
artifact if the store holds a verified one, and otherwise computes and publishes it. Prefect tasks in
`tasks/` are thin wrappers around these; the same functions run without Prefect in tests and notebooks.

Not in any key: the run id, the device (results are equivalent up to rounding and a team shares them
across machine types; only speed measurements key on the device), log levels, progress bars.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from dynslice.cache import cache_root, sha256_file
from dynslice.config import CalibrationConfig, EvaluationConfig, ModelConfig, PlanConfig
from dynslice.models import (DEMO_MODELS, ModelIdentity, _hub_revision, classify_source, fetch_uri,
                             folder_sha256, resolve_model)
from dynslice.errors import StateError
from dynslice.store import ArtifactRef, ArtifactStore, stage_key

log = logging.getLogger(__name__)

# bump a stage's version when its code changes what it produces: old artifacts stop matching
VERSIONS = {"capture": "1", "score": "1", "plan": "1", "slice": "1", "evaluate": "1"}


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def identify_model(model: ModelConfig) -> ModelIdentity:
    """The model's cache identity without loading its weights (hub: resolved commit; local: content hash)."""
    kind = classify_source(model.source)
    if kind == "hub":
        return ModelIdentity("hub", model.source, revision=_hub_revision(model.source, model.revision))
    if kind == "demo":
        local = cache_root() / DEMO_MODELS[model.source]
    elif kind == "uri":
        local = fetch_uri(model.source)
    else:
        local = Path(model.source.removeprefix("file://")).expanduser()
    digest = sha256_file(local) if local.is_file() else folder_sha256(local)
    return ModelIdentity(kind, model.source, sha256=digest)


def _timed(result: dict, start: float) -> dict:
    return dict(result, wall_s=round(time.perf_counter() - start, 2))


def _hit(store: ArtifactStore, stage: str, key: str) -> ArtifactRef | None:
    ref = store.lookup(stage, key)
    if ref is not None:
        log.info("%s: cache hit %s", stage, key[:12])
    return ref


# -- capture: calibration windows + the dense pass recording per-layer statistics -------------------------

def capture(store: ArtifactStore, model: ModelConfig, calibration: CalibrationConfig,
            device: str = "auto") -> ArtifactRef:
    from dynslice.data import calibration_windows
    from dynslice.models import load_tokenizer
    from dynslice.scores import score_all_metrics

    identity = identify_model(model)
    tokenizer_source = (cache_root() / DEMO_MODELS[model.source]) if identity.kind == "demo" else model.source
    tokenizer = load_tokenizer(fetch_uri(model.source) if identity.kind == "uri" else tokenizer_source,
                               revision=identity.revision)
    sample = calibration_windows(calibration.source, tokenizer, calibration.nsamples, calibration.seqlen,
                                 split=calibration.split, seed=calibration.seed)
    inputs = {"model": identity.key, "dtype": model.dtype, "data": sample.identity.key,
              "batch_size": calibration.batch_size}
    key = stage_key("capture", VERSIONS["capture"], inputs)
    if ref := _hit(store, "capture", key):
        return ref
    start = time.perf_counter()
    loaded = resolve_model(model.source, revision=model.revision, dtype=model.dtype, tokenizer=tokenizer)
    scores = score_all_metrics(loaded.model, sample.as_dict(), batch_size=calibration.batch_size,
                               device=resolve_device(device), model_id=identity.key,
                               data_id=sample.identity.key)
    config = loaded.model.config
    files = {"calibration.safetensors": save_tensors(sample.as_dict()),
             **{f"scores-{m}.json": s.to_json().encode() for m, s in scores.items()}}
    result = {"model": identity.to_dict(), "data": sample.identity.to_dict(), "num_layers": config.num_hidden_layers,
              "hidden_size": config.hidden_size, "num_tokens": int(sample.attention_mask.sum()),
              "architecture": type(loaded.model).__name__}
    return store.publish("capture", key, inputs=inputs, result=_timed(result, start), files=files)


def calibration_of(store: ArtifactStore, capture_ref: ArtifactRef) -> dict[str, torch.Tensor]:
    return load_tensors(store.read_bytes(capture_ref, "calibration.safetensors"))


# -- score: the chosen metric's layer scores -------------------------------------------------------------

def score(store: ArtifactStore, capture_ref: ArtifactRef, metric: str) -> ArtifactRef:
    from dynslice.plots import plot_scores
    from dynslice.scores import LayerScores

    inputs = {"capture": capture_ref.key, "metric": metric}
    key = stage_key("score", VERSIONS["score"], inputs)
    if ref := _hit(store, "score", key):
        return ref
    scores = LayerScores.from_json(store.read_bytes(capture_ref, f"scores-{metric}.json").decode())
    files = {"scores.json": scores.to_json().encode(), "scores.png": plot_scores(scores)}
    return store.publish("score", key, inputs=inputs, result={"metric": metric, "values": list(scores.values)},
                         files=files)


def scores_of(store: ArtifactStore, score_ref: ArtifactRef):
    from dynslice.scores import LayerScores

    return LayerScores.from_json(store.read_bytes(score_ref, "scores.json").decode())


# -- plan ------------------------------------------------------------------------------------------------

def plan(store: ArtifactStore, score_ref: ArtifactRef, plan_config: PlanConfig,
         variation: float | None = None) -> ArtifactRef:
    """A SlicePlan from the scores (planner constant or dynamic; `auto` is resolved by the flow)."""
    from dynslice import planners
    from dynslice.plots import plot_plan

    if plan_config.planner == "auto" and variation is None:
        raise ValueError("the auto planner picks a variation in the flow; pass the variation to plan")
    a = plan_config.effective_variation if variation is None else variation
    planner = "constant" if plan_config.planner == "constant" else "dynamic"
    params = {"planner": planner, "target": plan_config.target, "variation": None if planner == "constant" else a,
              "budget": plan_config.budget, "round_to": plan_config.round_to, "max_slice": plan_config.max_slice}
    inputs = {"score": score_ref.key, "params": params}
    key = stage_key("plan", VERSIONS["plan"], inputs)
    if ref := _hit(store, "plan", key):
        return ref
    scores = scores_of(store, score_ref)
    if planner == "constant":
        result_plan = planners.constant(plan_config.target, scores.config, budget=plan_config.budget,
                                        round_to=plan_config.round_to)
    else:
        result_plan = planners.dynamic(scores, plan_config.target, a, budget=plan_config.budget,
                                       max_slice=plan_config.max_slice, round_to=plan_config.round_to)
    hidden = scores.config["hidden_size"]
    files = {"plan.json": result_plan.to_json().encode(), "plan.png": plot_plan(result_plan, hidden)}
    result = {**params, "widths": list(result_plan.widths), "mid": list(result_plan.mid),
              **{k: result_plan.provenance.get(k) for k in ("achieved_mean_slicing", "achieved_param_reduction")}}
    return store.publish("plan", key, inputs=inputs, result=result, files=files)


# -- slice: the layer loop, checkpointed to the store ----------------------------------------------------

def slice_stage(store: ArtifactStore, model: ModelConfig, capture_ref: ArtifactRef, plan_ref: ArtifactRef,
                batch_size: int, device: str = "auto", checkpoint_every: int = 1) -> ArtifactRef:
    from dynslice import SlicePlan, save_sliced, slice_model
    from dynslice.plots import plot_spectra

    identity = capture_ref.result["model"]["key"]
    slice_plan = SlicePlan.from_json(store.read_bytes(plan_ref, "plan.json").decode())
    inputs = {"model": identity, "dtype": model.dtype, "calibration": capture_ref.key,
              "widths": list(slice_plan.widths), "mid": list(slice_plan.mid), "batch_size": batch_size}
    key = stage_key("slice", VERSIONS["slice"], inputs)
    if ref := _hit(store, "slice", key):
        return ref
    start = time.perf_counter()
    state_uri = store.checkpoint_uri("slice", key)
    resumed_from = _checkpointed_layer(store, key)
    loaded = resolve_model(model.source, revision=model.revision, dtype=model.dtype)
    dense = sum(p.numel() for p in {id(p): p for p in loaded.model.parameters()}.values())
    spectra: dict[str, torch.Tensor] = {}
    run = dict(batch_size=batch_size, device=resolve_device(device), state_dir=state_uri,
               checkpoint_every=checkpoint_every, spectra=spectra, storage_options=store.options)
    try:
        sliced = slice_model(loaded.model, calibration_of(store, capture_ref), slice_plan, **run)
    except StateError as exc:  # refused before touching the model: a checkpoint this run cannot use
        log.warning("slice %s: %s; discarding the checkpoint", key[:12], exc)
        store.drop_checkpoint("slice", key)
        resumed_from = 0
        sliced = slice_model(loaded.model, calibration_of(store, capture_ref), slice_plan, **run)
    kept = {"embedding": slice_plan.widths[0],
            **{f"layer.{i}.mid": slice_plan.mid[i] for i in range(slice_plan.num_layers)},
            **{f"layer.{i}.out": slice_plan.widths[i + 1] for i in range(slice_plan.num_layers)}}
    spectra_json = {name: [float(v) for v in values] for name, values in spectra.items()}
    params = sum(p.numel() for p in sliced.parameters())
    with tempfile.TemporaryDirectory(prefix="dynslice-slice-") as tmp:
        save_sliced(sliced, tmp, tokenizer=loaded.tokenizer)
        files = {f"model/{p.name}": str(p) for p in sorted(Path(tmp).iterdir()) if p.is_file()}
        files["spectra.json"] = json.dumps(spectra_json).encode()
        files["spectra.png"] = plot_spectra(spectra_json, kept)
        result = {"parameters": params, "dense_parameters": dense, "param_reduction": 1 - params / dense,
                  "widths": list(slice_plan.widths), "resumed_from_layer": resumed_from,
                  "layers_computed": slice_plan.num_layers - resumed_from}
        ref = store.publish("slice", key, inputs=inputs, result=_timed(result, start), files=files)
    store.drop_checkpoint("slice", key)
    return ref


def _checkpointed_layer(store: ArtifactStore, key: str) -> int:
    try:
        return int(json.loads(store.fs.cat_file(store.path("checkpoints", "slice", key, "state.json")))["next_layer"])
    except (FileNotFoundError, KeyError, ValueError):
        return 0


def sliced_model_dir(store: ArtifactStore, slice_ref: ArtifactRef) -> Path:
    """A verified local copy of the sliced model (cached by artifact key)."""
    model_files = {n: d for n, d in slice_ref.files.items() if n.startswith("model/")}
    folder = cache_root() / "artifacts" / slice_ref.key
    store.fetch(ArtifactRef(slice_ref.stage, slice_ref.key, slice_ref.store, model_files), folder)
    return folder / "model"


# -- evaluate --------------------------------------------------------------------------------------------

def evaluate(store: ArtifactStore, model: ModelConfig, evaluation: EvaluationConfig, device: str = "auto",
             slice_ref: ArtifactRef | None = None) -> ArtifactRef:
    """Evaluate the dense model (slice_ref None) or a sliced artifact: perplexity, zero-shot, speed."""
    from dynslice.evaluation.report import EvalSettings, evaluate_models

    device = resolve_device(device)
    subject = f"slice:{slice_ref.key}" if slice_ref is not None else identify_model(model).key
    params = evaluation.model_dump()
    inputs = {"model": subject, "dtype": model.dtype, "evaluation": params, "data": _evaluation_data(evaluation),
              "machine": _machine(device) if evaluation.speed else None}
    key = stage_key("evaluate", VERSIONS["evaluate"], inputs)
    if ref := _hit(store, "evaluate", key):
        return ref
    start = time.perf_counter()
    source = str(sliced_model_dir(store, slice_ref)) if slice_ref is not None else model.source
    loaded = resolve_model(source, revision=None if slice_ref else model.revision, dtype=model.dtype,
                           device=device)
    settings = EvalSettings(ppl=evaluation.ppl, ppl_split=evaluation.ppl_split, seqlen=evaluation.ppl_seqlen,
                            max_windows=evaluation.ppl_windows, tasks=tuple(evaluation.tasks), limit=evaluation.limit,
                            speed=evaluation.speed, batch_size=evaluation.batch_size)
    report = evaluate_models({"model": loaded}, settings)
    entry = report["models"]["model"]
    result = {"parameters": sum(p.numel() for p in {id(p): p for p in loaded.model.parameters()}.values()),
              **summarize(entry)}
    files = {"evaluation.json": json.dumps(report, indent=2, sort_keys=True, default=str).encode()}
    return store.publish("evaluate", key, inputs=inputs, result=_timed(result, start), files=files)


def _machine(device: str) -> dict[str, str]:
    """Speed depends on the exact hardware and software, so speed results are keyed on them."""
    import platform

    import transformers

    kind = torch.device(device)
    name = torch.cuda.get_device_name(kind) if kind.type == "cuda" else (platform.processor() or platform.machine())
    return {"device": kind.type, "name": name, "threads": str(torch.get_num_threads()), "torch": torch.__version__,
            "transformers": transformers.__version__}


def _evaluation_data(evaluation: EvaluationConfig) -> dict[str, Any]:
    """Identity of the evaluation data: the perplexity text's content key and the task files' hashes."""
    from dynslice.cache import sha256_tree
    from dynslice.data import default_eval_split, load_corpus, resolve_data

    out: dict[str, Any] = {}
    if evaluation.ppl:
        src = resolve_data(evaluation.ppl, evaluation.ppl_split or default_eval_split(evaluation.ppl))
        out["ppl"] = load_corpus(src).source_key
    tasks = {}
    for spec in evaluation.tasks:
        path = Path(spec).expanduser()
        if path.is_file():
            tasks[spec] = sha256_file(path)
        elif path.is_dir():
            tasks[spec] = sha256_tree({p.relative_to(path).as_posix(): sha256_file(p)
                                       for p in sorted(path.rglob("*")) if p.is_file()})
        else:  # a task name: lm-eval's own definition, tied to its version
            tasks[spec] = _lm_eval_version()
    out["tasks"] = tasks
    return out


def _lm_eval_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("lm_eval")
    except PackageNotFoundError:
        return None


def summarize(entry: dict[str, Any]) -> dict[str, Any]:
    """The headline numbers of one model's evaluation entry."""
    out: dict[str, Any] = {}
    if "perplexity" in entry:
        out["perplexity"] = entry["perplexity"].get("perplexity")
    if "zero_shot" in entry:
        zs = entry["zero_shot"]
        out["accuracy"], out["accuracy_norm"] = zs.get("mean_acc"), zs.get("mean_acc_norm")
        out["tasks"] = zs.get("tasks")
    if "speed" in entry:
        out["speed"] = entry["speed"]
    return out
