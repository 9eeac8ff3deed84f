"""Run reports: a markdown table of dense against sliced, written from the stages' JSON results."""

from __future__ import annotations

import base64
import re
from typing import Any


def run_name(model_source: str, planner: str, target: float, slice_key: str) -> str:
    """Deterministic: a cached re-run of the same configuration lands on the same run folder."""
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", model_source.rstrip("/").split("/")[-1]).strip("-.") or "model"
    return f"{stem}-{planner}-t{target:g}-{slice_key[:10]}"


def _num(value: Any, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def comparison_rows(dense: dict, sliced: dict) -> list[tuple[str, str, str]]:
    """(metric, dense, sliced) rows from two `evaluate` results."""
    rows = [("parameters", f"{dense['parameters']:,}", f"{sliced['parameters']:,} ({_size_change(dense, sliced)})")]
    if "perplexity" in dense:
        rows.append(("perplexity", _num(dense.get("perplexity"), ".3f"), _num(sliced.get("perplexity"), ".3f")))
    if "accuracy" in dense:
        rows.append(("zero-shot accuracy (mean acc)", _num(dense.get("accuracy"), ".4f"),
                     _num(sliced.get("accuracy"), ".4f")))
        rows.append(("zero-shot accuracy (mean acc_norm)", _num(dense.get("accuracy_norm"), ".4f"),
                     _num(sliced.get("accuracy_norm"), ".4f")))
    if "speed" in dense:
        d, s = dense["speed"], sliced["speed"]
        rows += [("prefill tokens/s", f"{d['prefill_tokens_per_s']:.0f}", f"{s['prefill_tokens_per_s']:.0f}"),
                 ("decode ms/token", f"{d['decode_ms_per_token']:.2f}", f"{s['decode_ms_per_token']:.2f}"),
                 ("weights + buffers (MB)", f"{d['memory_bytes'] / 2**20:.1f}", f"{s['memory_bytes'] / 2**20:.1f}")]
    return rows


def _size_change(dense: dict, sliced: dict) -> str:
    removed = 1 - sliced["parameters"] / dense["parameters"]
    if removed >= 0:
        return f"{removed:.1%} removed"
    # the shortcut matrices (and an untied head) can outweigh what a low target slices away
    return f"{-removed:.1%} more than dense: shortcut matrices outweigh the slicing"


def markdown_table(rows: list[tuple[str, ...]], header: tuple[str, ...]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def compress_report(run: str, config: dict, results: dict[str, dict], images: dict[str, str]) -> str:
    """Markdown for one compression run; `images` maps a caption to an image reference (path or data URI)."""
    plan, sliced = results["plan"], results["slice"]
    cal, model = config["calibration"], config["model"]
    lines = [
        f"# dynslice run `{run}`", "",
        f"- model: `{model['source']}` ({model['dtype']}), identity `{results['score']['model']['key'][:23]}`",
        f"- calibration: `{cal['source']}` {cal['nsamples']} x {cal['seqlen']} tokens, seed {cal['seed']}",
        f"- plan: {plan['planner']}, target {plan['target']}, variation {plan.get('variation')}, "
        f"budget {plan['budget']}; achieved mean slicing {_num(plan.get('achieved_mean_slicing'), '.4f')}, "
        f"parameters removed {_num(plan.get('achieved_param_reduction'), '.4f')}",
        f"- slicing: {sliced['layers_computed']} layers computed (resumed from layer {sliced['resumed_from_layer']}),"
        f" {sliced.get('wall_s', 'n/a')} s",
        *_recovery_line(results.get("recover")), "",
        "## Dense against sliced", "",
        markdown_table(comparison_rows(results["dense_eval"], results["sliced_eval"]), ("", "dense", "sliced")),
        "", f"Evaluation: {eval_line(config['evaluation'])}", "",
    ]
    for caption, ref in images.items():
        lines += [f"### {caption}", "", f"![{caption}]({ref})", ""]
    return "\n".join(lines)


def _recovery_line(recovered: dict | None) -> list[str]:
    if not recovered:
        return []
    return [f"- recovery (LoRA, merged): {recovered.get('steps')} steps, training loss "
            f"{_num(recovered.get('loss_start'), '.4f')} -> {_num(recovered.get('loss_end'), '.4f')}, "
            f"{recovered.get('tokens', 0):,} tokens, {recovered.get('wall_s', 'n/a')} s"]


def eval_line(evaluation: dict) -> str:
    parts = []
    if evaluation.get("ppl"):
        windows = evaluation.get("ppl_windows") or "all"
        parts.append(f"perplexity on `{evaluation['ppl']}` test split, {windows} windows of {evaluation['ppl_seqlen']}")
    if evaluation.get("tasks"):
        parts.append(f"lm-eval {', '.join(evaluation['tasks'])} (limit {evaluation.get('limit') or 'none'})")
    if evaluation.get("speed"):
        parts.append("speed on the same prompts and device")
    return "; ".join(parts) or "none"


def sweep_report(run: str, points: list[dict], best: dict, final: str) -> str:
    rows = [(p["planner"], f"{p['target']:g}", "-" if p["variation"] is None else f"{p['variation']:g}",
             p["budget"], f"{p['param_reduction']:.4f}", f"{p['perplexity']:.3f}",
             "**best**" if p is best else "") for p in points]
    return "\n".join([f"# dynslice sweep `{run}`", "", "Held-out perplexity of every grid point "
                      "(selection split; never the test split):", "",
                      markdown_table(rows, ("planner", "target", "variation", "budget", "params removed",
                                            "held-out ppl", "")), "", final])


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()
