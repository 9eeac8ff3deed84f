"""One evaluation run over one or more models (e.g. sliced and its dense baseline) with one EvaluationConfig:
the JSON-able report, and the table people read."""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import torch

from dynslice.data import default_eval_split, load_corpus, resolve_data
from dynslice.config import EvaluationConfig
from dynslice.evaluation.perplexity import perplexity, token_stream
from dynslice.evaluation.speed import measure_speed, speed_prompts
from dynslice.evaluation.zeroshot import zero_shot
from dynslice.models import LoadedModel

log = logging.getLogger(__name__)


def _ppl_text(evaluation: EvaluationConfig, cache_dir) -> tuple[str, dict[str, Any]]:
    split = evaluation.ppl_split or default_eval_split(evaluation.ppl)
    src = resolve_data(evaluation.ppl, split, field=evaluation.field, cache_dir=cache_dir)
    corpus = load_corpus(src)
    return corpus.eval_text, {"source": evaluation.ppl, "split": src.split, "location": src.describe(),
                              "key": corpus.source_key, "documents": len(corpus.documents)}


def evaluate_models(models: dict[str, LoadedModel], evaluation: EvaluationConfig,
                    cache_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """Run every evaluation asked for on each model (same data, same prompts); returns the JSON report."""
    report: dict[str, Any] = {"settings": evaluation.model_dump(), "models": {}}
    text = None
    if evaluation.ppl:
        text, report["data"] = _ppl_text(evaluation, cache_dir)
    shared_prompts = None
    for label, loaded in models.items():
        model, tok = loaded.model, loaded.tokenizer
        entry: dict[str, Any] = {"identity": loaded.identity.to_dict(), "class": type(model).__name__,
                                 "wall_s": {}}
        ids = None
        if text is not None:
            t0 = time.perf_counter()
            ids = token_stream(tok, text)
            entry["perplexity"] = perplexity(model, ids, evaluation.ppl_seqlen, max_windows=evaluation.ppl_windows,
                                             batch_size=evaluation.batch_size).to_dict()
            entry["wall_s"]["perplexity"] = round(time.perf_counter() - t0, 2)
        if evaluation.tasks:
            t0 = time.perf_counter()
            entry["zero_shot"] = zero_shot(model, tok, evaluation.tasks, batch_size=evaluation.batch_size,
                                           limit=evaluation.limit, num_fewshot=evaluation.num_fewshot,
                                           cache_dir=cache_dir).to_dict()
            entry["wall_s"]["zero_shot"] = round(time.perf_counter() - t0, 2)
        if evaluation.speed:
            if shared_prompts is None:  # the first model's tokens; every model gets the same prompts
                shared_prompts = speed_prompts(model.config.vocab_size, evaluation.speed_batch,
                                               evaluation.prompt_len, ids=ids)
            t0 = time.perf_counter()
            entry["speed"] = measure_speed(model, shared_prompts, decode_tokens=evaluation.decode_tokens,
                                           repeats=evaluation.repeats).to_dict()
            entry["wall_s"]["speed"] = round(time.perf_counter() - t0, 2)
        report["models"][label] = entry
    report["torch"] = torch.__version__
    return report


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def table_rows(report: dict[str, Any]) -> list[list[str]]:
    """Metric rows with one column per model."""
    labels = list(report["models"])
    rows = [["metric", *labels]]

    def add(name: str, getter, spec: str) -> None:
        values = [getter(report["models"][label]) for label in labels]
        if any(v is not None for v in values):
            rows.append([name, *(_fmt(v, spec) for v in values)])

    add("perplexity", lambda e: e.get("perplexity", {}).get("perplexity"), ".4f")
    add("ppl windows x seqlen", lambda e: (f"{e['perplexity']['windows']} x {e['perplexity']['seqlen']}"
                                          if "perplexity" in e else None), "s")
    tasks = sorted({t for e in report["models"].values() for t in e.get("zero_shot", {}).get("tasks", {})})
    for task in tasks:
        for metric in ("acc", "acc_norm"):
            add(f"{task} {metric}", lambda e, t=task, m=metric: e.get("zero_shot", {}).get("tasks", {})
                .get(t, {}).get(m), ".4f")
    if len(tasks) > 1:
        add("mean acc", lambda e: e.get("zero_shot", {}).get("mean_acc"), ".4f")
        add("mean acc_norm", lambda e: e.get("zero_shot", {}).get("mean_acc_norm"), ".4f")
    add("prefill tokens/s", lambda e: e.get("speed", {}).get("prefill_tokens_per_s"), ",.0f")
    add("decode ms/token", lambda e: e.get("speed", {}).get("decode_ms_per_token"), ".2f")
    add("parameters", lambda e: e.get("speed", {}).get("parameters"), ",d")
    add("memory MiB", lambda e: (e["speed"]["memory_bytes"] / 2**20 if "speed" in e else None), ",.1f")
    return rows


def render_table(report: dict[str, Any]) -> str:
    rows = table_rows(report)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
             for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
