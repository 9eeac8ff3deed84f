"""Local multiple-choice tasks for lm-eval: the offline default built from the MMLU dev exemplars lm-eval
itself ships, and user JSONL files. Each becomes a normalized JSONL + task YAML in the cache.

JSONL record: {"question": str, "choices": [str, ...], "answer": index or letter, ...other fields kept}.
Scored cloze-style (like lm-eval's mmlu_continuation and arc_easy): the model ranks the choice texts after
"Question: ...\\nAnswer:", which gives acc and a length-normalized acc_norm.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
from pathlib import Path
from typing import Any

import yaml

from dynslice.hashing import sha256_bytes, sha256_file
from dynslice.locations import cache_root
from dynslice.errors import EvaluationError

log = logging.getLogger(__name__)

MMLU_TASK = "mmlu_exemplars"
LM_EVAL_PROMPTS = "tasks/mmlu/flan_cot_fewshot/_cot_prompts.json"
_ANSWER = re.compile(r"The answer is \(([A-J])\)\.?\s*$")
_OPTION = re.compile(r"(?:^|\s+)\(([A-J])\) ")
# JSON turned LaTeX's \frac and \rightarrow into control characters; give them back their backslash
_MANGLED = {"\x0c": "\\f", "\r": "\\r"}


def _letter_index(letter: str) -> int:
    return ord(letter) - ord("A")


def parse_cot_prompts(prompts: dict[str, str]) -> list[dict[str, Any]]:
    """{subject: few-shot prompt} -> items {subject, question, choices, answer}; unparseable blocks skipped."""
    items = []
    for subject, text in prompts.items():
        for char, fixed in _MANGLED.items():
            text = text.replace(char, fixed)
        _, *blocks = re.split(r"\n\n(?=Q: )", text.strip())
        for block in blocks:
            body, sep, explanation = block.removeprefix("Q: ").partition("\nA: ")
            at = body.rfind("\n(A) ")
            answer = _ANSWER.search(explanation)
            if not sep or at < 0 or answer is None:
                continue
            parts = _OPTION.split(body[at + 1:])
            letters, choices = parts[1::2], [p.strip() for p in parts[2::2]]
            if (parts[0].strip() or letters != [chr(65 + k) for k in range(len(letters))]
                    or answer.group(1) not in letters or not all(choices)):
                continue
            items.append({"subject": subject.replace("_", " "), "question": body[:at].strip(),
                          "choices": choices, "answer": _letter_index(answer.group(1))})
    return items


def lm_eval_prompts_file() -> Path:
    spec = importlib.util.find_spec("lm_eval")
    if spec is None or spec.origin is None:
        raise EvaluationError("zero-shot evaluation needs lm-eval: pip install 'lm-eval>=0.4.9'")
    path = Path(spec.origin).parent / LM_EVAL_PROMPTS
    if not path.is_file():
        raise EvaluationError(f"this lm-eval has no {LM_EVAL_PROMPTS}: install lm-eval 0.4.x, or pass your own "
                              f"task JSONL with --tasks FILE.jsonl")
    return path


def normalize_item(record: Any, where: str) -> dict[str, Any]:
    if not isinstance(record, dict):
        raise EvaluationError(f"{where}: expected a JSON object, got {type(record).__name__}")
    question, choices, answer = record.get("question"), record.get("choices"), record.get("answer")
    if not isinstance(question, str) or not question.strip():
        raise EvaluationError(f"{where}: needs a non-empty `question` string")
    if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) and c for c in choices):
        raise EvaluationError(f"{where}: needs `choices`, a list of at least two non-empty strings")
    if isinstance(answer, str) and len(answer) == 1 and answer.isalpha():
        answer = _letter_index(answer.upper())
    if isinstance(answer, bool) or not isinstance(answer, int) or not 0 <= answer < len(choices):
        raise EvaluationError(f"{where}: `answer` must be a choice index in [0, {len(choices)}) or its letter, "
                              f"got {record.get('answer')!r}")
    return dict(record, question=question, choices=choices, answer=answer)


def task_config(name: str, jsonl: str | os.PathLike) -> dict[str, Any]:
    """The lm-eval task config (what the YAML holds) of a normalized local JSONL."""
    return {
        "task": name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(Path(jsonl).resolve())}},
        "output_type": "multiple_choice",
        "test_split": "test",
        "doc_to_text": "Question: {{question.strip()}}\nAnswer:",
        "doc_to_target": "answer",
        "doc_to_choice": "{{choices}}",
        "metric_list": [{"metric": m, "aggregation": "mean", "higher_is_better": True} for m in ("acc", "acc_norm")],
        "metadata": {"version": 1.0},
    }


def write_task(name: str, items: list[dict[str, Any]], folder: str | os.PathLike, source: dict) -> dict:
    """Write {name}.jsonl, {name}.yaml and task.json (written last: what `cached_task` trusts)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    jsonl = folder / f"{name}.jsonl"
    jsonl.write_text("".join(json.dumps(item, ensure_ascii=False, sort_keys=True) + "\n" for item in items))
    config = task_config(name, jsonl)
    (folder / f"{name}.yaml").write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True))
    manifest = {"task": name, "items": len(items), "source": source, "jsonl_sha256": sha256_file(jsonl)}
    (folder / "task.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return config


def cached_task(folder: Path, source: dict) -> dict | None:
    """The config of a task already written from the same source and intact, else None."""
    manifest_path = folder / "task.json"
    if not manifest_path.is_file():
        return None
    manifest = json.loads(manifest_path.read_text())
    jsonl = folder / f"{manifest['task']}.jsonl"
    if manifest.get("source") != source or not jsonl.is_file() or sha256_file(jsonl) != manifest["jsonl_sha256"]:
        return None
    return task_config(manifest["task"], jsonl)


def mmlu_exemplar_task(cache_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """Build (once) the offline default task from lm-eval's shipped MMLU exemplars; returns its config."""
    prompts = lm_eval_prompts_file()
    source = {"file": LM_EVAL_PROMPTS, "sha256": sha256_file(prompts)}
    folder = Path(cache_dir or cache_root()) / "tasks" / MMLU_TASK
    config = cached_task(folder, source)
    if config is None:
        items = parse_cot_prompts(json.loads(prompts.read_text(encoding="utf-8")))
        if not items:
            raise EvaluationError(f"no multiple-choice item could be parsed from {prompts}")
        config = write_task(MMLU_TASK, items, folder, source)
        log.info("wrote %d MMLU exemplar items to %s", len(items), folder)
    return config


def jsonl_task(path: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """A user JSONL checked record by record, normalized into the cache once per content hash."""
    path = Path(path)
    data = path.read_bytes()
    name = re.sub(r"\W+", "_", path.stem).strip("_") or "local_task"
    source = {"file": path.name, "sha256": sha256_bytes(data)}
    folder = Path(cache_dir or cache_root()) / "tasks" / f"{name}-{source['sha256'][:12]}"
    config = cached_task(folder, source)
    if config is None:
        lines = [(i, line) for i, line in enumerate(data.decode("utf-8").splitlines(), 1) if line.strip()]
        if not lines:
            raise EvaluationError(f"{path} holds no task item")
        items = []
        for i, line in lines:
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise EvaluationError(f"{path}:{i}: not valid JSON ({exc})") from exc
            items.append(normalize_item(record, f"{path}:{i}"))
        config = write_task(name, items, folder, source)
    return config
