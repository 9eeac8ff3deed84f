"""Pictures for reports: PNG bytes drawn headless (matplotlib's Agg canvas, no pyplot, no global state).

matplotlib is imported when a picture is drawn, so `import dynslice` stays light.
"""

from __future__ import annotations

import io

from dynslice.errors import PlanError
from dynslice.plan import SlicePlan
from dynslice.scores import LayerScores, redundancy


_BELOW = {"loc": "upper center", "bbox_to_anchor": (0.5, -0.2), "frameon": False}  # legends under the axes


def _figure(num_layers: int):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(max(5.0, 0.25 * num_layers + 2.0), 3.2))
    FigureCanvasAgg(fig)  # Agg: draws without a display, whatever backend pyplot is set to
    return fig


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return buffer.getvalue()


def plot_scores(scores: LayerScores) -> bytes:
    """Bar chart of the score per layer, with the redundancy r = 1 - minmax(score) on a second axis."""
    layers = list(range(scores.num_layers))
    fig = _figure(scores.num_layers)
    ax = fig.add_subplot()
    ax.bar(layers, scores.values, color="tab:blue", label=f"{scores.metric} score (importance)")
    ax.set_xlabel("decoder layer")
    ax.set_ylabel(f"{scores.metric} score")
    twin = ax.twinx()
    twin.plot(layers, redundancy(scores.values), color="tab:orange", marker=".", label="redundancy r")
    twin.set_ylim(-0.05, 1.05)
    twin.set_ylabel("redundancy")
    model = (scores.provenance.get("model") or {}).get("id")
    ax.set_title(f"layer scores{f' of {model}' if model else ''} ({scores.num_tokens} tokens)", fontsize=9)
    handles = ax.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
    ax.legend(handles, [h.get_label() for h in handles], fontsize=7, ncol=2, **_BELOW)
    return _png(fig)


def plot_plan(plan: SlicePlan, hidden_size: int | None = None) -> bytes:
    """Width of the stream entering each layer (and the attention-to-MLP width) against constant slicing.

    The constant line is the uniform width with the plan's mean slicing; hidden_size defaults to the
    plan's provenance, else to the head width widths[L].
    """
    hidden = int(hidden_size or plan.provenance.get("hidden_size") or plan.widths[-1])
    if hidden < max(plan.widths + plan.mid):
        raise PlanError(f"hidden_size {hidden} is narrower than the plan's widths")
    layers = list(range(plan.num_layers + 1))
    fig = _figure(plan.num_layers)
    ax = fig.add_subplot()
    ax.step(layers, plan.widths, where="post", color="tab:blue", label="input width d_i")
    ax.plot(layers[:-1], plan.mid, linestyle="none", marker="_", markersize=8, color="tab:green",
            label="attention-to-MLP width")
    mean_width = (1.0 - plan.mean_slicing(hidden)) * hidden
    ax.axhline(mean_width, color="tab:gray", linestyle="--", label=f"constant, same mean ({mean_width:.0f})")
    ax.axhline(hidden, color="black", linewidth=0.8)
    if plan.removed:
        ax.plot(list(plan.removed), [0] * len(plan.removed), linestyle="none", marker="x", markersize=9,
                color="tab:red", clip_on=False, label="layer removed")
    for removed, marker, label in ((plan.removed_attention, "v", "attention removed"),
                                   (plan.removed_mlp, "^", "MLP removed")):
        if removed:
            ax.plot(list(removed), [0] * len(removed), linestyle="none", marker=marker, markersize=8,
                    color="tab:orange" if marker == "v" else "tab:purple", clip_on=False, label=label)
    ax.set_ylim(0, hidden * 1.05)
    ax.set_xlabel("layer (d_0 = embedding width, d_L = head)")
    ax.set_ylabel("width")
    p = plan.provenance
    title = [f"{p.get('planner', 'plan')}"] + [f"{k}={p[k]}" for k in ("budget", "target", "variation") if k in p]
    if "achieved_param_reduction" in p:
        title.append(f"params removed {p['achieved_param_reduction']:.3f}")
    ax.set_title(", ".join(title), fontsize=9)
    ax.legend(fontsize=7, ncol=3, **_BELOW)
    return _png(fig)


def plot_spectra(spectra: dict, widths: dict[str, int]) -> bytes:
    """Share of each PCA's variance that the kept components hold, per basis (embedding, mid, out)."""
    names = sorted((k for k in spectra if k in widths),
                   key=lambda k: (-1, "") if k == "embedding" else (int(k.split(".")[1]), k.split(".")[2]))
    kept = []
    for name in names:
        values = [max(float(v), 0.0) for v in spectra[name]]
        total = sum(values) or 1.0
        kept.append(sum(values[: widths[name]]) / total)
    fig = _figure(len(names) // 2 + 1)
    ax = fig.add_subplot()
    colors = ["tab:purple" if n == "embedding" else "tab:green" if n.endswith(".mid") else "tab:blue" for n in names]
    ax.bar(range(len(names)), kept, color=colors)
    ax.set_ylim(min(kept + [1.0]) * 0.98 if kept else 0, 1.0)
    ax.set_xticks(range(len(names)), [n.replace("layer.", "") for n in names], rotation=90, fontsize=6)
    ax.set_ylabel("variance kept")
    ax.set_title("share of each signal's variance kept by slicing (green: attention-to-MLP, blue: layer output)",
                 fontsize=9)
    return _png(fig)


def plot_sweep(points: list[dict]) -> bytes:
    """Held-out perplexity against parameters removed, one marker per sliced model (label: planner)."""
    fig = _figure(12)
    ax = fig.add_subplot()
    for planner, marker in (("constant", "o"), ("dynamic", "s")):
        pts = [p for p in points if p["planner"] == planner]
        ax.scatter([p["param_reduction"] for p in pts], [p["perplexity"] for p in pts], marker=marker,
                   label=planner)
    best = min(points, key=lambda p: p["perplexity"]) if points else None
    if best:
        ax.annotate("best", (best["param_reduction"], best["perplexity"]), fontsize=8)
    ax.set_xlabel("fraction of parameters removed")
    ax.set_ylabel("held-out perplexity")
    ax.set_title("sweep: perplexity against size", fontsize=9)
    ax.legend(fontsize=7)
    return _png(fig)
