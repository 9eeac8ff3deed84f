"""Zero-shot accuracy through lm-eval's HFLM wrapping an already loaded (dense or sliced) model.

Task specs: `mmlu_exemplars` (the offline default, built from lm-eval's own MMLU dev exemplars), a local
JSONL file (see tasks.py for its records), a task YAML file, a folder of task YAMLs (every task or group in
it), or any task name lm-eval knows (piqa, hellaswag, arc_easy, arc_challenge, winogrande: their data comes
from the hub, so offline they need the local datasets cache).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from dynslice.errors import EvaluationError
from dynslice.evaluation.local_tasks import MMLU_TASK, jsonl_task, mmlu_exemplar_task

log = logging.getLogger(__name__)

DEFAULT_TASK = MMLU_TASK
PAPER_TASKS = ("piqa", "hellaswag", "arc_easy", "arc_challenge", "winogrande")
PAPER_PRESET = "paper"  # the zero-shot suite SliceGPT and the dynamic-slicing paper report


@dataclass(frozen=True)
class ZeroShotResult:
    tasks: dict[str, dict[str, Any]]  # task -> acc, acc_stderr, acc_norm, acc_norm_stderr, samples
    mean_acc: float | None  # unweighted mean over the leaf tasks
    mean_acc_norm: float | None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class TaskPlan:
    specs: tuple[Any, ...]  # what lm-eval's TaskManager.load takes: names, YAML paths, config dicts
    include_paths: tuple[str, ...]
    needs_registry: bool  # some spec is a name from lm-eval's own task folder (slow index, hub data)


def _folder_tasks(folder: Path) -> list[str]:
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(folder), include_defaults=False)
    names = manager.all_groups or manager.all_subtasks
    if not names:
        raise EvaluationError(f"{folder} defines no lm-eval task: put task YAML files (with a `task:` key) there")
    return names


def expand_tasks(tasks: Sequence[str]) -> list[str]:
    """Task specs with the `paper` preset replaced by its tasks."""
    return [t for spec in tasks for t in (PAPER_TASKS if spec == PAPER_PRESET else (spec,))]


def plan_tasks(tasks: Sequence[str], cache_dir: str | os.PathLike | None = None) -> TaskPlan:
    """Turn user task specs into lm-eval specs; local files are checked and normalized here, once."""
    if not tasks:
        raise EvaluationError(f"no task given: name lm-eval tasks, a JSONL/YAML file or folder, or "
                              f"{DEFAULT_TASK} (offline)")
    specs: list[Any] = []
    includes: list[str] = []
    registry = False
    for spec in expand_tasks(tasks):
        path = Path(str(spec)).expanduser()
        if spec == DEFAULT_TASK:
            specs.append(mmlu_exemplar_task(cache_dir))
        elif path.is_dir():
            includes.append(str(path.resolve()))
            specs += _folder_tasks(path)
        elif path.is_file() and path.suffix == ".jsonl":
            specs.append(jsonl_task(path, cache_dir))
        elif path.is_file() and path.suffix in (".yaml", ".yml"):
            specs.append(str(path.resolve()))
        elif path.suffix in (".jsonl", ".yaml", ".yml") or "/" in str(spec):
            raise EvaluationError(f"no such task file or folder: {spec}")
        else:
            specs.append(str(spec))
            registry = True
    return TaskPlan(tuple(specs), tuple(includes), registry)


def _metrics(entry: dict, samples: int | None) -> dict[str, Any]:
    def get(key: str):
        value = entry.get(f"{key},none")
        return float(value) if isinstance(value, (int, float)) else None

    return {"acc": get("acc"), "acc_stderr": get("acc_stderr"), "acc_norm": get("acc_norm"),
            "acc_norm_stderr": get("acc_norm_stderr"), "samples": samples}


def _mean(values: list[float | None]) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def zero_shot(model, tokenizer, tasks: Sequence[str] = (DEFAULT_TASK,), *, batch_size: int = 8,
              limit: int | float | None = None, num_fewshot: int | None = None, max_length: int | None = None,
              cache_dir: str | os.PathLike | None = None, seed: int = 1234) -> ZeroShotResult:
    """Per-task and mean acc / acc_norm; `limit` caps the items per task (for quick checks)."""
    try:
        from lm_eval import simple_evaluate
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError as exc:
        raise EvaluationError("zero-shot evaluation needs lm-eval: pip install 'lm-eval>=0.4.9'") from exc
    plan = plan_tasks(tasks, cache_dir)
    extra = {}
    if getattr(tokenizer, "bos_token_id", None) is None and getattr(tokenizer, "eos_token_id", None) is None:
        # lm-eval starts an empty context with BOS (else EOS); a tokenizer with neither gets its pad id
        extra["prefix_token_id"] = getattr(tokenizer, "pad_token_id", None) or 0
    lm = HFLM(pretrained=model, tokenizer=tokenizer, backend="causal", batch_size=batch_size,
              max_length=max_length, **extra)
    manager = TaskManager(include_path=list(plan.include_paths) or None, include_defaults=plan.needs_registry)
    try:
        out = simple_evaluate(model=lm, tasks=list(plan.specs), task_manager=manager, limit=limit,
                              num_fewshot=num_fewshot, log_samples=False, random_seed=seed,
                              numpy_random_seed=seed, torch_random_seed=seed, fewshot_random_seed=seed)
    except KeyError as exc:
        raise EvaluationError(f"unknown lm-eval task {exc}: name a task lm-eval lists (`lm-eval ls tasks`), a "
                              f"JSONL/YAML file or folder, or {DEFAULT_TASK}") from exc
    except (OSError, ConnectionError) as exc:
        raise EvaluationError(f"a task's data could not be read ({exc}); hub tasks ({', '.join(PAPER_TASKS)}) "
                              f"need network or the local datasets cache, {DEFAULT_TASK} and local JSONL tasks "
                              f"work offline") from exc
    groups = set(out.get("group_subtasks", {}))
    samples = {name: (v or {}).get("effective") for name, v in out.get("n-samples", {}).items()}
    per_task = {name: _metrics(entry, samples.get(name)) for name, entry in sorted(out["results"].items())}
    leaves = [m for name, m in per_task.items() if name not in groups]
    result = ZeroShotResult(per_task, _mean([m["acc"] for m in leaves]), _mean([m["acc_norm"] for m in leaves]))
    log.info("zero-shot mean acc %s, acc_norm %s over %d tasks", result.mean_acc, result.mean_acc_norm,
             len(leaves))
    return result
