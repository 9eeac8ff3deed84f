"""Prepare a Prefect server for the dynslice deployments; safe to run again (everything is created or updated
in place).

    python deploy/bootstrap.py --pool gpu --type process --gpus 1 --store s3://dynslice/store

- the work pool the deployments in deploy/prefect.yaml use, with its base job template: Prefect's own for a
  `process` pool (flow runs as subprocesses of a worker on the GPU machine), deploy/pools/docker.json or
  deploy/pools/kubernetes.json (a container or a Job per flow run, with one GPU and the cache volume);
- the concurrency limit on the tag `gpu`, which every heavy stage (score, slice, recover, evaluate) carries: at
  most one per GPU at a time, across all the pool's workers;
- the crash-recovery automations of deploy/automations.yaml (replaced by name);
- the Prefect Variables `dynslice-store` (the team store, for runs that leave `store` at its default) and
  `dynslice-store-block` (the block holding its credentials), when given.

It talks to the server PREFECT_API_URL names (and PREFECT_API_AUTH_STRING when the server has basic auth on).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
POOL_TYPES = ("process", "docker", "kubernetes")
GPU_TAG = "gpu"


def base_job_template(kind: str) -> dict:
    if kind == "process":
        from prefect.workers.process import ProcessWorker

        return ProcessWorker.get_default_base_job_template()
    return json.loads((HERE / "pools" / f"{kind}.json").read_text())


def ensure_pool(client, name: str, kind: str, limit: int | None) -> str:
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound

    try:
        existing = client.read_work_pool(name)
    except ObjectNotFound:
        existing = None
    if existing is not None and existing.type != kind:
        raise SystemExit(f"work pool {name!r} exists with type {existing.type!r}, not {kind!r}: pick another name, "
                         f"or delete it first (prefect work-pool delete {name})")
    settings = {"concurrency_limit": limit} if limit else {}
    client.create_work_pool(WorkPoolCreate(name=name, type=kind, base_job_template=base_job_template(kind),
                                           **settings), overwrite=True)
    return "updated" if existing else "created"


def ensure_automations(client, path: Path) -> list[str]:
    from prefect.events.schemas.automations import AutomationCore

    names = []
    for data in yaml.safe_load(path.read_text())["automations"]:
        automation = AutomationCore.model_validate(data)
        for old in client.read_automations_by_name(automation.name):
            client.delete_automation(old.id)
        client.create_automation(automation)
        names.append(automation.name)
    return names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pool", default="gpu", help="work pool name (deploy/prefect.yaml uses gpu)")
    parser.add_argument("--type", dest="kind", choices=POOL_TYPES, default="process",
                        help="process: one machine (or several, each with a worker); docker: a container per run "
                             "(prefect-docker on the worker); kubernetes: a Job per run (prefect-kubernetes)")
    parser.add_argument("--gpus", type=int, default=1, help="GPUs the pool's machines have in all: heavy stages at "
                                                            "a time (the `gpu` tag's concurrency limit)")
    parser.add_argument("--pool-limit", type=int, help="flow runs at a time in the whole pool (default: no limit; "
                                                       "each worker takes one at a time)")
    parser.add_argument("--store", help="the team store, e.g. s3://dynslice/store (Variable dynslice-store)")
    parser.add_argument("--store-block", help="block with the store's credentials, e.g. aws-credentials/team "
                                              "(Variable dynslice-store-block)")
    parser.add_argument("--automations", type=Path, default=HERE / "automations.yaml")
    args = parser.parse_args(argv)

    from prefect.client.orchestration import get_client
    from prefect.variables import Variable

    from dynslice.tasks.common import STORE_BLOCK_VARIABLE, STORE_VARIABLE

    with get_client(sync_client=True) as client:
        print(f"work pool {args.pool} ({args.kind}): {ensure_pool(client, args.pool, args.kind, args.pool_limit)}")
        client.create_concurrency_limit(tag=GPU_TAG, concurrency_limit=args.gpus)
        print(f"concurrency limit on tag {GPU_TAG}: {args.gpus}")
        for name in ensure_automations(client, args.automations):
            print(f"automation {name}: created")
    for variable, value in ((STORE_VARIABLE, args.store), (STORE_BLOCK_VARIABLE, args.store_block)):
        if value:
            Variable.set(variable, value, overwrite=True)
            print(f"variable {variable}: {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
