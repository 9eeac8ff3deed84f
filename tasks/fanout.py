"""Fan a sweep out over a team's GPU machines: one run of the compress deployment per grid point, each taken by
whichever worker of the deployment's pool is free; the sweep waits for them and reads their artifacts from the
store."""

from __future__ import annotations

import time
from uuid import UUID

from prefect import task
from prefect.cache_policies import NONE
from prefect.client.orchestration import get_client
from prefect.deployments import run_deployment

from dynslice.errors import DynsliceError

CRASH_GRACE = 300  # seconds a crashed point may take to be rescheduled (deploy/automations.yaml) before it counts
POLL = 5


@task(name="start-point", task_run_name="start-{name}", cache_policy=NONE, persist_result=False)
def start_point(deployment: str, config: dict, name: str) -> str:
    """One deployment run for one grid point (its flow run id); it is queued at once, not waited for here."""
    return str(run_deployment(deployment, parameters={"config": config}, timeout=0).id)


@task(name="wait-for-points", task_run_name="wait-for-points", cache_policy=NONE, persist_result=False)
def wait_for_points(run_ids: list[str]) -> None:
    """Until every point's run has finished; fails naming the runs that did not complete. A crashed run gets
    CRASH_GRACE seconds to be rescheduled by the crash automation before it counts as failed."""
    crashed_since: dict[str, float] = {}
    with get_client(sync_client=True) as client:
        while True:
            runs = [client.read_flow_run(UUID(i)) for i in run_ids]
            now = time.monotonic()
            for run in runs:
                if run.state.is_crashed():
                    crashed_since.setdefault(str(run.id), now)
                else:
                    crashed_since.pop(str(run.id), None)
            done = [r for r in runs if r.state.is_final()
                    and (not r.state.is_crashed() or now - crashed_since[str(r.id)] > CRASH_GRACE)]
            if len(done) == len(runs):
                break
            time.sleep(POLL)
    failed = [f"{r.name} ({r.state.name})" for r in runs if not r.state.is_completed()]
    if failed:
        raise DynsliceError(f"{len(failed)} of {len(runs)} grid points did not complete: {', '.join(failed)}; "
                            f"rerun the sweep once they are fixed (finished points are served from the store)")
