"""Publish a run: export the report, plots and model under runs/<name>/ and show them in the Prefect UI."""

from __future__ import annotations

import json

from prefect import task
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NONE

from dynslice import report
from dynslice.store import ArtifactRef, Blob
from tasks.common import RETRY, io_errors_only, open_store

_PLOTS = {"layer scores": ("score", "scores.png"), "widths per layer": ("plan", "plan.png"),
          "variance kept per layer": ("slice", "spectra.png")}


@task(name="publish", cache_policy=NONE, persist_result=False, retry_condition_fn=io_errors_only, **RETRY)
def publish(store: dict, run: str, config: dict, refs: dict[str, dict]) -> dict:
    st = open_store(store)
    refs = {name: ArtifactRef.from_dict(ref) for name, ref in refs.items()}
    results = {name: ref.result for name, ref in refs.items()}
    images = {caption: refs[stage].files[name] for caption, (stage, name) in _PLOTS.items()}
    files: dict = {name: Blob(images[caption]) for caption, (_, name) in _PLOTS.items()}
    files["plan.json"] = Blob(refs["plan"].files["plan.json"])
    files.update({name: Blob(digest) for name, digest in refs["slice"].files.items() if name.startswith("model/")})
    files["summary.json"] = json.dumps({"config": config, "results": results,
                                        "artifacts": {k: r.manifest_uri for k, r in refs.items()}},
                                       indent=2, sort_keys=True).encode()
    exported = {caption: name for caption, (_, name) in _PLOTS.items()}
    files["report.md"] = report.compress_report(run, config, results, exported).encode()
    url = st.export(run, files)

    inline = {caption: report.data_uri(st.read_bytes(refs[stage], name)) for caption, (stage, name) in _PLOTS.items()}
    create_markdown_artifact(report.compress_report(run, config, results, inline), key="dynslice-report",
                             description=f"dense against sliced, run {run}")
    rows = report.comparison_rows(results["dense_eval"], results["sliced_eval"])
    create_table_artifact([{"metric": m, "dense": d, "sliced": s} for m, d, s in rows], key="dynslice-metrics")
    create_link_artifact(f"{url}/model", link_text="sliced model", key="dynslice-model")
    create_link_artifact(f"{url}/report.md", link_text="report", key="dynslice-run")
    return {"run": url, "model": f"{url}/model", "report": f"{url}/report.md",
            "table": report.markdown_table(rows, ("", "dense", "sliced"))}
