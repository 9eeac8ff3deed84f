"""Publish a run (dynslice.pipeline.publish) and show it in the Prefect UI as artifacts."""

from __future__ import annotations

from prefect import task
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NONE

from dynslice.config import HubConfig
from dynslice.pipeline.publish import publish_run
from dynslice.store import ArtifactRef
from dynslice.tasks.common import RETRY, io_errors_only, open_store


@task(name="publish", cache_policy=NONE, persist_result=False, retry_condition_fn=io_errors_only, **RETRY)
def publish(store: dict, run: str, config: dict, refs: dict[str, dict]) -> dict:
    done = publish_run(open_store(store), run, config, {k: ArtifactRef.from_dict(r) for k, r in refs.items()})
    create_markdown_artifact(done.markdown, key="dynslice-report", description=f"dense against sliced, run {run}")
    create_table_artifact([{"metric": m, "dense": d, "sliced": s} for m, d, s in done.rows], key="dynslice-metrics")
    create_link_artifact(f"{done.url}/model", link_text="sliced model", key="dynslice-model")
    create_link_artifact(f"{done.url}/report.md", link_text="report", key="dynslice-run")
    return {"run": done.url, "model": f"{done.url}/model", "report": f"{done.url}/report.md", "table": done.table}


@task(name="push-to-hub", cache_policy=NONE, persist_result=False, retry_condition_fn=io_errors_only, **RETRY)
def push_to_hub(run_url: str, hub: HubConfig) -> str:
    """Upload the exported run's model and its model card to the Hub; the token comes from a Secret block or
    the worker's environment (HF_TOKEN), never from the configuration or a log."""
    from dynslice.hub import push

    token = None
    if hub.token_block:
        from prefect.blocks.system import Secret

        token = Secret.load(hub.token_block).get()
    url = push(run_url, hub.repo_id, token=token, private=hub.private, revision=hub.revision)
    create_link_artifact(url, link_text=f"{hub.repo_id} on the Hub", key="dynslice-hub")
    return url
