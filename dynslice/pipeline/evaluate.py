"""Stage `evaluate`: perplexity, zero-shot accuracy and speed of the dense model or of a sliced artifact.

Key: the subject (the dense model's identity, or the slice artifact), its dtype, the evaluation settings, the
evaluation data's identity, and (speed only) the machine the timing is taken on.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dynslice.config import EvaluationConfig, ModelConfig
from dynslice.counts import unique_parameters
from dynslice.data import data_key, default_eval_split, resolve_data
from dynslice.devices import machine, resolve_device
from dynslice.evaluation.suite import evaluate_models
from dynslice.evaluation.zeroshot import expand_tasks
from dynslice.hashing import sha256_file, sha256_tree
from dynslice.identity import identify_model
from dynslice.models import resolve_model
from dynslice.pipeline import slice as slice_stage
from dynslice.pipeline.stage import Output, Stage, run_stage
from dynslice.store import ArtifactRef, ArtifactStore

STAGE = Stage("evaluate", code=(__name__,), outputs=("evaluation.json",))


def run(store: ArtifactStore, model: ModelConfig, evaluation: EvaluationConfig, device: str = "auto",
        slice_ref: ArtifactRef | None = None) -> ArtifactRef:
    """Evaluate the dense model (slice_ref None) or a sliced artifact (of the slice or the recover stage)."""
    resolved = resolve_device(device)
    subject = (f"{slice_ref.stage}:{slice_ref.key}" if slice_ref is not None
               else identify_model(model.source, model.revision).key)
    inputs = {"model": subject, "dtype": model.dtype, "evaluation": evaluation.model_dump(),
              "data": data_identity(evaluation), "machine": machine(resolved) if evaluation.speed else None}

    def compute(key: str) -> Output:
        if slice_ref is not None:
            loaded = resolve_model(slice_stage.model_dir(store, slice_ref), dtype=model.dtype, device=resolved)
        else:
            loaded = resolve_model(model.source, revision=model.revision, dtype=model.dtype, device=resolved)
        report = evaluate_models({"model": loaded}, evaluation)
        result = {"parameters": unique_parameters(loaded.model), **summarize(report["models"]["model"])}
        return Output(result, {"evaluation.json": json.dumps(report, indent=2, sort_keys=True, default=str).encode()})

    return run_stage(store, STAGE, inputs, compute)


def data_identity(evaluation: EvaluationConfig) -> dict[str, Any]:
    """Identity of the evaluation data: the perplexity text's content key and the task files' hashes."""
    out: dict[str, Any] = {}
    if evaluation.ppl:
        src = resolve_data(evaluation.ppl, evaluation.ppl_split or default_eval_split(evaluation.ppl),
                           field=evaluation.field)
        out["ppl"] = data_key(src)
    tasks = {}
    for spec in expand_tasks(evaluation.tasks):
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
