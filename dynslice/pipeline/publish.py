"""Publish a run: the report, plots, plan and sliced model exported under `runs/<name>/` in the store.

Not a cached stage: it always runs (it is cheap: blobs are copied inside the store, never downloaded).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from dynslice import report
from dynslice.store import ArtifactRef, ArtifactStore, Blob


@dataclass(frozen=True)
class Published:
    url: str  # runs/<name> in the store
    rows: list[tuple[str, str, str]]  # (metric, dense, sliced)
    markdown: str  # the report, with the plots inlined as data URIs (for the Prefect UI)

    @property
    def table(self) -> str:
        return report.markdown_table(self.rows, ("", "dense", "sliced"))


def plots(metric: str) -> dict[str, tuple[str, str, str]]:
    """caption -> (stage, the stage's file name, the exported file name)."""
    return {"layer scores": ("score", f"scores-{metric}.png", "scores.png"),
            "widths per layer": ("plan", "plan.png", "plan.png"),
            "variance kept per layer": ("slice", "spectra.png", "spectra.png")}


def publish_run(store: ArtifactStore, run: str, config: dict, refs: dict[str, ArtifactRef]) -> Published:
    """Export one compression run; refs: calibration, score, plan, slice, (recover,) dense_eval, sliced_eval.
    The exported model is the recovered one when the run recovered, else the slice."""
    results = {name: ref.result for name, ref in refs.items()}
    figures = plots(config["plan"]["metric"])
    files: dict = {exported: Blob(refs[stage].files[name]) for stage, name, exported in figures.values()}
    files["plan.json"] = Blob(refs["plan"].files["plan.json"])
    model = refs.get("recover", refs["slice"])
    files.update({name: Blob(digest) for name, digest in model.files.items() if name.startswith("model/")})
    if "recover" in refs:
        files["recovery.json"] = Blob(refs["recover"].files["recovery.json"])
    files["summary.json"] = json.dumps({"config": config, "results": results,
                                        "artifacts": {k: r.manifest_uri for k, r in refs.items()}},
                                       indent=2, sort_keys=True).encode()
    exported = {caption: name for caption, (_, _, name) in figures.items()}
    files["report.md"] = report.compress_report(run, config, results, exported).encode()
    url = store.export(run, files)
    inline = {caption: report.data_uri(store.read_bytes(refs[stage], name))
              for caption, (stage, name, _) in figures.items()}
    rows = report.comparison_rows(results["dense_eval"], results["sliced_eval"])
    return Published(url, rows, report.compress_report(run, config, results, inline))
