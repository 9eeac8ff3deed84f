"""Publish a run (dynslice.pipeline.publish) and show it in the Prefect UI as artifacts.

Links must open in a teammate's browser: an object store's files get presigned https links (valid for
LINK_SECONDS; signed for DYNSLICE_S3_PUBLIC_ENDPOINT when the worker reaches the store at an address browsers
cannot, e.g. http://minio:9000 inside the compose network). A local folder has no web form: the artifact says
which worker holds the files, and where.
"""

from __future__ import annotations

import datetime
import json
import os
import socket

from prefect import task
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NONE

from dynslice.config import HubConfig
from dynslice.pipeline.publish import publish_run
from dynslice.store import ArtifactRef, ArtifactStore
from dynslice.tasks.common import RETRY, io_errors_only, open_store

LINK_SECONDS = 7 * 24 * 3600  # the longest an S3 (SigV4) presigned link may live
PUBLIC_ENDPOINT = "DYNSLICE_S3_PUBLIC_ENDPOINT"


def file_links(store: ArtifactStore, run: str) -> dict[str, str] | None:
    """{file name: https link} for the files of runs/<run>/, or None for a store without an http form."""
    if store.local:
        return None
    fs = store.fs
    if os.environ.get(PUBLIC_ENDPOINT) and "s3" in fs.protocol:  # sign for the address browsers reach
        fs = type(fs)(**{**store.options, "endpoint_url": os.environ[PUBLIC_ENDPOINT]})
    files = json.loads(store.fs.cat_file(store.path("runs", run, "MANIFEST.json")))["files"]
    try:
        return {name: fs.sign(store.path("runs", run, name), expiration=LINK_SECONDS) for name in sorted(files)}
    except NotImplementedError:  # fsspec's default: this protocol cannot make links
        return None


def files_markdown(store: ArtifactStore, run: str, links: dict[str, str] | None) -> str:
    if links is None:
        where = store.path("runs", run)
        return (f"### Files of run {run}\n\nThe store is a local folder, which has no web link: the files are on "
                f"the worker `{socket.gethostname()}` at `{where}`. Open them there, or point the deployment at an "
                f"s3:// store (the Prefect Variable `dynslice-store`) for links the whole team can open.\n")
    until = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=LINK_SECONDS)
    rows = "\n".join(f"| [{name}]({url}) |" for name, url in links.items())
    return (f"### Files of run {run}\n\nPresigned links, valid until {until:%Y-%m-%d %H:%M} UTC (rerun the flow "
            f"for fresh ones: it is served from the store).\n\n| file |\n|---|\n{rows}\n")


_OPTIONS = dict(cache_policy=NONE, persist_result=False, retry_condition_fn=io_errors_only, **RETRY)


@task(name="publish", task_run_name="publish", **_OPTIONS)
def publish(store: dict, run: str, config: dict, refs: dict[str, dict]) -> dict:
    opened = open_store(store)
    done = publish_run(opened, run, config, {k: ArtifactRef.from_dict(r) for k, r in refs.items()})
    create_markdown_artifact(done.markdown, key="dynslice-report", description=f"dense against sliced, run {run}")
    create_table_artifact([{"metric": m, "dense": d, "sliced": s} for m, d, s in done.rows], key="dynslice-metrics")
    links = file_links(opened, run)
    create_markdown_artifact(files_markdown(opened, run, links), key="dynslice-files",
                             description=f"the files of run {run}")
    if links:
        create_link_artifact(links["report.md"], link_text="report", key="dynslice-run")
        weights = links.get("model/model.safetensors.index.json") or links.get("model/model.safetensors")
        if weights:
            create_link_artifact(weights, link_text="sliced model weights", key="dynslice-model")
    return {"run": done.url, "model": f"{done.url}/model", "report": f"{done.url}/report.md", "table": done.table}


@task(name="push-to-hub", task_run_name="push-to-hub", **_OPTIONS)
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
