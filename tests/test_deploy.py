"""Team operations: deploy/ (deployments, work pools, automations, the bootstrap script) against a real Prefect
server and a real process worker, both started here on loopback with their own PREFECT_HOMEs.

Fast checks (the files themselves, the wheel's contents, the configuration's form) run by default; the ones that
need the server and the worker are `slow` and share one server, one `prefect deploy --all` and one worker per
module. The worker runs flows from the installed dynslice package (module entrypoints), like the worker image."""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path
from uuid import UUID

import pydantic
import pytest
import yaml

from conftest import TEXT, forget_prefect_services, model_folder, twelve_layer_folder
from s3server import s3_server

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
PICKLE_MARKS = (b"cloudpickle", b"gASV", b"gAWV")  # the library's name; base64 of protocol 4 and 5 headers


def prefect_yaml() -> dict:
    return yaml.safe_load((DEPLOY / "prefect.yaml").read_text())


# -- the files, without a server -------------------------------------------------------------------------------

def test_every_configuration_field_has_a_description_for_the_ui_form():
    import dynslice.config as config

    models = [cls for cls in vars(config).values() if inspect.isclass(cls) and issubclass(cls, pydantic.BaseModel)
              and cls.__module__ == config.__name__ and not cls.__name__.startswith("_")]
    assert {"CompressConfig", "SweepConfig", "TimeoutConfig", "PlanConfig"} <= {m.__name__ for m in models}
    for model in models:
        assert model.__doc__, f"{model.__name__} has no docstring (the form's section text)"
        missing = [name for name, field in model.model_fields.items() if not field.description]
        assert not missing, f"{model.__name__}: no description for {missing}"


def test_deployments_name_installed_flows_describe_themselves_and_carry_the_crash_recovery_contract():
    from prefect.flows import Flow, load_flow_from_entrypoint

    spec = prefect_yaml()
    assert spec["pull"] == [] and spec["build"] == [] and spec["push"] == []  # code from the installed package
    names = set()
    for d in spec["deployments"]:
        flow = load_flow_from_entrypoint(d["entrypoint"])  # a module path: no checkout needed on the worker
        assert isinstance(flow, Flow) and ":" not in d["entrypoint"]
        names.add(f"{flow.name}/{d['name']}")
        assert len(d["description"]) > 40 and d["description"] != "None"
        assert "dynslice" in d["tags"]  # the automations' scope
        assert d["enforce_parameter_schema"] is True
        assert d["work_pool"]["job_variables"]["env"]["PREFECT_FLOWS_HEARTBEAT_FREQUENCY"] == "30"
    assert names == {"compress/nightly", "compress/on-demand", "sweep/on-demand"}
    nightly = next(d for d in spec["deployments"] if d["name"] == "nightly")
    assert nightly["schedules"] == [{"cron": "0 2 * * *", "timezone": "UTC", "active": False}]
    from dynslice.config import SweepConfig

    assert SweepConfig.model_fields["deployment"].default in names


def test_automations_parse_and_recover_only_dynslice_runs():
    from prefect.events.schemas.automations import AutomationCore

    automations = [AutomationCore.model_validate(a)
                   for a in yaml.safe_load((DEPLOY / "automations.yaml").read_text())["automations"]]
    assert [a.name for a in automations] == ["dynslice-crash-silent-runs", "dynslice-reschedule-crashed-runs"]
    silent, crashed = automations
    assert silent.trigger.posture == "Proactive" and silent.trigger.after == {"prefect.flow-run.heartbeat"}
    assert silent.trigger.within.total_seconds() == 90  # three heartbeats of 30 s
    assert crashed.trigger.expect == {"prefect.flow-run.Crashed"}
    assert [(a.type, a.state.value) for a in silent.actions + crashed.actions] == \
        [("change-flow-run-state", "CRASHED"), ("change-flow-run-state", "SCHEDULED")]
    for a in automations:
        assert a.trigger.match_related.model_dump() == {"prefect.resource.role": "tag",
                                                        "prefect.resource.id": "prefect.tag.dynslice"}


@pytest.mark.parametrize("kind", ["docker", "kubernetes"])
def test_pool_templates_ask_for_a_gpu_and_keep_a_cache(kind):
    import jsonschema
    from prefect.utilities.templating import apply_values, find_placeholders

    template = json.loads((DEPLOY / "pools" / f"{kind}.json").read_text())
    variables = template["variables"]
    jsonschema.Draft7Validator.check_schema(variables)
    used = {p.name for p in find_placeholders(json.dumps(template["job_configuration"]))}
    assert used <= set(variables["properties"]), used - set(variables["properties"])
    assert all(v.get("description") for v in variables["properties"].values())
    defaults = {k: v["default"] for k, v in variables["properties"].items() if "default" in v}
    job = apply_values(template["job_configuration"], defaults, remove_notset=True)
    if kind == "docker":
        assert job["container_create_kwargs"]["device_requests"] == \
            [{"driver": "nvidia", "count": 1, "capabilities": [["gpu"]]}]
        assert "dynslice-cache:/cache" in job["volumes"]
    else:
        pod = job["job_manifest"]["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        assert container["resources"]["limits"] == {"nvidia.com/gpu": 1}
        assert {"name": "cache", "mountPath": "/cache"} in container["volumeMounts"]
        assert {"name": "cache", "persistentVolumeClaim": {"claimName": "dynslice-cache"}} in pod["volumes"]


def test_the_wheel_installs_nothing_at_the_top_level_but_dynslice(tmp_path):
    """What `pip install .` puts in site-packages is the wheel's file list: only dynslice/ and its metadata."""
    import setuptools
    from packaging.version import Version

    source = tmp_path / "src"  # a copy: building writes build/ and *.egg-info next to the sources
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    for folder in ("dynslice", "flows", "tasks"):
        shutil.copytree(REPO / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__"))
    # the installed setuptools when it can build this pyproject (fast, offline); else pip's isolated build
    isolation = [] if Version(setuptools.__version__) < Version("77") else ["--no-build-isolation"]
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", *isolation, "-w", str(tmp_path / "w"),
                    str(source)], check=True, capture_output=True, timeout=600)
    (wheel,) = (tmp_path / "w").glob("dynslice-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    version = wheel.name.split("-")[1]
    assert {name.split("/")[0] for name in names} == {"dynslice", f"dynslice-{version}.dist-info"}
    assert "dynslice/flows/compress.py" in names and "dynslice/tasks/stages.py" in names


# -- a real server and worker ------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env(home: Path, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false", OMP_NUM_THREADS="1",
               HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false", **extra)
    return env


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    """The process and every process it started (each was given a session of its own)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


class Stack:
    """A Prefect server, the deployments and a process worker, each a subprocess with its own PREFECT_HOME."""

    def __init__(self, root: Path):
        self.root, self.port = root, free_port()
        self.url = f"http://127.0.0.1:{self.port}/api"
        self.homes = {name: root / f"prefect-{name}" for name in ("server", "cli", "worker")}
        self.cache, self.team_store = root / "cache", root / "team-store"
        self.server = self.worker = None
        self.workers_started = 0

    def env(self, home: str, **extra: str) -> dict:
        return clean_env(self.homes[home], PREFECT_API_URL=self.url, DYNSLICE_CACHE=str(self.cache), **extra)

    def start_server(self) -> None:
        # a task waiting for the `gpu` slot asks again after at most 5 s (30 s by default: long for a test)
        env = clean_env(self.homes["server"], PREFECT_UI_ENABLED="false",
                        PREFECT_SERVER_TASKS_TAG_CONCURRENCY_SLOT_WAIT_SECONDS="5")
        self.server = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                                        "--port", str(self.port)], env=env, stdout=open(self.root / "server.log", "w"),
                                       stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + 240  # a fresh database is migrated first: ~40 s on two busy cores
        while time.time() < deadline:
            with contextlib.suppress(OSError):
                if urllib.request.urlopen(f"{self.url}/health", timeout=2).status == 200:
                    return
            assert self.server.poll() is None, (self.root / "server.log").read_text()[-3000:]
            time.sleep(0.5)
        raise AssertionError("the Prefect server did not come up:\n" + (self.root / "server.log").read_text()[-3000:])

    def cli(self, *args: str) -> str:
        """A command run like a teammate would, from the repository root."""
        done = subprocess.run([sys.executable, *args], cwd=REPO, env=self.env("cli"), capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, f"{args}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        return done.stdout

    def start_worker(self) -> None:
        """A process worker polling the pool `gpu` every 2 s, two flow runs at a time; slicing leases expire 5 s
        after their holder dies."""
        self.workers_started += 1
        log = open(self.root / f"worker-{self.workers_started}.log", "w")
        env = self.env("worker", PREFECT_WORKER_QUERY_SECONDS="2", DYNSLICE_LEASE_SECONDS="5")
        self.worker = subprocess.Popen([sys.executable, "-m", "prefect", "worker", "start", "--pool", "gpu",
                                        "--limit", "2"], cwd=self.root, env=env, stdout=log,
                                       stderr=subprocess.STDOUT, start_new_session=True)

    def kill_worker(self) -> list[int]:
        """SIGKILL the worker and every process it started, like a machine that is lost: nobody reports."""
        import psutil

        procs = [psutil.Process(self.worker.pid), *psutil.Process(self.worker.pid).children(recursive=True)]
        for p in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.send_signal(signal.SIGKILL)
        self.worker.wait(timeout=30)
        return [p.pid for p in procs]

    @contextlib.contextmanager
    def client(self):
        from prefect.client.orchestration import get_client
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings({PREFECT_API_URL: self.url}), get_client(sync_client=True) as client:
            yield client

    def trigger(self, deployment: str, config: dict):
        """What the UI's Run > Custom run does: a flow run of the deployment with the form's parameters."""
        with self.client() as client:
            d = client.read_deployment_by_name(deployment)
            return client.create_flow_run_from_deployment(d.id, parameters={"config": config})

    def wait(self, run_id: UUID, timeout: float = 600, until=lambda s: s.is_final() and not s.is_crashed()):
        deadline = time.time() + timeout
        with self.client() as client:
            while time.time() < deadline:
                run = client.read_flow_run(run_id)
                if until(run.state):
                    return run
                time.sleep(1)
        logs = "\n".join(p.read_text()[-4000:] for p in sorted(self.root.glob("worker-*.log")))
        raise AssertionError(f"flow run {run_id} is still {run.state.name} after {timeout} s:\n{logs}")

    def close(self) -> None:
        for proc in (self.worker, self.server):
            if proc is not None and proc.poll() is None:
                stop(proc)


def tiny_config(ws: Path, **sections) -> dict:
    """A configuration the form accepts: a 12-layer model small enough to slice in seconds, long enough (64 x 96
    tokens) to be killed mid-loop. No `store`: the run uses the team store (the Variable dynslice-store)."""
    cfg = {"model": {"source": str(ws / "dense")},
           "calibration": {"source": str(ws / "calib.txt"), "nsamples": 64, "seqlen": 96, "batch_size": 8},
           "plan": {"planner": "dynamic", "target": 0.25, "variation": 0.1, "round_to": 4},
           "evaluation": {"ppl": str(ws / "eval.txt"), "ppl_seqlen": 32, "ppl_windows": 4, "tasks": [],
                          "speed": False}}
    for name, values in sections.items():
        cfg[name] = {**cfg.get(name, {}), **values} if isinstance(values, dict) else values
    return cfg


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    root = tmp_path_factory.mktemp("stack")
    twelve_layer_folder(root)
    s = Stack(root)
    try:
        s.start_server()
        s.cli("deploy/bootstrap.py", "--pool", "gpu", "--type", "process", "--gpus", "1",
              "--store", str(s.team_store))
        s.start_worker()  # it starts while the deployments register
        s.cli("-m", "prefect", "--no-prompt", "deploy", "--all", "--prefect-file", "deploy/prefect.yaml")
        yield s
    finally:
        s.close()
        forget_prefect_services()


@pytest.fixture(scope="module")
def lost_worker(stack):
    """Started first, checked last: a run whose worker (and the run's process) is SIGKILLed mid-slicing, like a
    machine that is lost; a new worker starts at once. The automations take up to 90 s to notice the silence,
    and the other tests run meanwhile."""
    from dynslice.loopstate import LoopState

    store = stack.root / "killed-store"
    run = stack.trigger("compress/on-demand", tiny_config(stack.root, store=str(store)))
    checkpoints, deadline = store / "checkpoints" / "slice", time.time() + 300
    while time.time() < deadline:
        for state in checkpoints.glob("*/state.json"):
            if 2 <= (layer := LoopState.progress(str(state.parent))) < 10:
                stack.kill_worker()
                stack.start_worker()  # the machine comes back (or another one takes its place)
                return {"run": run, "layer": layer, "store": store, "at": time.time()}
        time.sleep(0.01)
    raise AssertionError("the run was not seen slicing")


@pytest.fixture(scope="module")
def first_runs(stack):
    """Two UI-style runs of compress/on-demand, side by side on the worker: one that nothing disturbs (the
    reference for the killed run's bytes), and one whose store cannot be written (a failed run)."""
    started = time.time()
    good = stack.trigger("compress/on-demand", tiny_config(stack.root))
    bad = stack.trigger("compress/on-demand", tiny_config(stack.root, store="/dev/null/not-a-folder"))
    done = stack.wait(good.id)
    return {"run": done, "seconds": time.time() - started, "failed": stack.wait(bad.id)}


@pytest.mark.slow
def test_deploy_registers_every_deployment_with_its_schedule_tags_limits_and_schema(stack, lost_worker):
    from dynslice.config import CompressConfig, SweepConfig

    with stack.client() as client:
        deployments = {f"{client.read_flow(d.flow_id).name}/{d.name}": d for d in client.read_deployments()}
        pool = client.read_work_pool("gpu")
        (limit,) = [c for c in client.read_concurrency_limits(limit=10, offset=0) if c.tag == "gpu"]
        automations = {a.name: a for a in client.read_automations()}
    assert set(deployments) == {"compress/nightly", "compress/on-demand", "sweep/on-demand"}
    assert pool.type == "process" and limit.concurrency_limit == 1
    assert set(automations) == {"dynslice-crash-silent-runs", "dynslice-reschedule-crashed-runs"}
    nightly, on_demand, sweep = (deployments[n] for n in ("compress/nightly", "compress/on-demand", "sweep/on-demand"))
    (schedule,) = nightly.schedules
    assert schedule.schedule.cron == "0 2 * * *" and schedule.active is False  # off until the team turns it on
    assert not on_demand.schedules and not sweep.schedules
    assert nightly.tags == ["dynslice", "nightly"] and on_demand.tags == ["dynslice", "on-demand"]
    assert nightly.global_concurrency_limit.limit == 1
    assert nightly.concurrency_options.collision_strategy == "CANCEL_NEW"
    assert sweep.global_concurrency_limit.limit == 1 and on_demand.global_concurrency_limit is None
    for d in deployments.values():
        assert d.description and d.description != "None" and d.enforce_parameter_schema
        assert d.entrypoint.startswith("dynslice.flows.") and d.pull_steps == []
        assert d.work_pool_name == "gpu"
    for d, model in ((on_demand, CompressConfig), (sweep, SweepConfig)):
        schema = d.parameter_openapi_schema
        assert schema["properties"]["config"]["$ref"] == f"#/definitions/{model.__name__}"
        form = schema["definitions"][model.__name__]
        assert form["additionalProperties"] is False and set(form["properties"]) == set(model.model_fields)
        assert all(p.get("description") for p in form["properties"].values())


@pytest.mark.slow
def test_a_run_triggered_like_the_ui_completes_with_named_task_runs_into_the_team_store(stack, first_runs):
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, FlowRunFilter, FlowRunFilterId
    from prefect.exceptions import PrefectHTTPStatusError

    from dynslice.store import ArtifactStore

    run, seconds = first_runs["run"], first_runs["seconds"]
    print(f"\ntrigger to completed run through the worker: {seconds:.0f} s")
    assert run.state.is_completed(), run.state.message
    assert run.name == "dense-dynamic-t0.25-a0.1"  # model, planner, target (and variation)
    with stack.client() as client:
        tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])))
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(
            any_=[run.id])))
    assert sorted(t.name for t in tasks) == ["calibration", "check-store", "evaluate-dense", "evaluate-sliced",
                                             "plan-dynamic-t0.25-a0.1", "publish", "score",
                                             "slice-dynamic-t0.25-a0.1"]
    assert {t.name: t.tags for t in tasks}["slice-dynamic-t0.25-a0.1"] == ["gpu"]
    store = ArtifactStore(stack.team_store)  # the Variable's store: the form left `store` at its default
    assert {m["stage"] for m in store.manifests()} == {"calibration", "score", "plan", "slice", "evaluate"}
    (report,) = stack.team_store.glob("runs/*/report.md")
    assert "| perplexity |" in report.read_text()
    files = next(a for a in artifacts if a.key == "dynslice-files")
    assert "local folder" in files.data and str(stack.team_store) in files.data  # no link that cannot open
    assert {"dynslice-report", "dynslice-metrics"} <= {a.key for a in artifacts}

    for bad in ({"plan": {"target": 1.5}}, {"plan": {"planner": "magic"}}, {"no_such_field": 1}):
        with pytest.raises(PrefectHTTPStatusError, match="409"):
            stack.trigger("compress/on-demand", tiny_config(stack.root, **bad))


@pytest.mark.slow
def test_a_sweep_on_dask_or_over_deployments_gives_the_same_table_as_in_sequence(stack, tmp_path, monkeypatch):
    """Two grid points, sliced one after the other in this process, then side by side on a local Dask cluster of
    two worker processes, and as two runs of compress/on-demand on the worker."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from dynslice.config import load_config, SweepConfig
    from dynslice.flows.sweep import sweep
    from dynslice.store import ArtifactStore

    monkeypatch.setenv("DYNSLICE_CACHE", str(stack.cache))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the Dask workers' torch computes like this process's
    model_folder(tmp_path)
    (tmp_path / "eval.txt").write_text(TEXT[::-1])
    (tmp_path / "heldout.txt").write_text(TEXT[100:] + TEXT[:100])
    base = {"model": {"source": str(tmp_path / "dense")},
            "calibration": {"source": str(tmp_path / "calib.txt"), "nsamples": 8, "seqlen": 32, "batch_size": 4},
            "plan": {"round_to": 4},
            "evaluation": {"ppl": str(tmp_path / "eval.txt"), "ppl_seqlen": 32, "ppl_windows": 4, "tasks": [],
                           "speed": False},
            "selection": {"source": str(tmp_path / "heldout.txt"), "split": None, "seqlen": 32, "windows": 4},
            "grid": {"targets": [0.25], "variations": [0.1], "planners": ["constant", "dynamic"]}}
    tables = {}
    with stack.client() as client, temporary_settings({PREFECT_API_URL: stack.url}):
        client.create_concurrency_limit(tag="gpu", concurrency_limit=2)  # two GPUs, for this test
        try:
            for runner in ("threads", "dask", "deployments"):
                cfg = dict(base, store=str(tmp_path / f"store-{runner}"), runner=runner,
                           workers=1 if runner == "threads" else 2)
                tables[runner] = sweep(load_config(cfg, SweepConfig))["points"]
        finally:
            client.create_concurrency_limit(tag="gpu", concurrency_limit=1)
    assert len(tables["threads"]) == 2
    assert tables["dask"] == tables["threads"] and tables["deployments"] == tables["threads"]
    points = ArtifactStore(tmp_path / "store-deployments")
    assert len([m for m in points.manifests("evaluate")]) >= 3  # the points' own runs: dense, and each sliced
    assert len(list((tmp_path / "store-deployments" / "runs").iterdir())) == 3  # each point's run, and the sweep


@pytest.mark.slow
def test_an_aws_credentials_block_opens_the_store_and_links_are_presigned(stack, tmp_path, monkeypatch):
    import s3fs
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect_aws import AwsCredentials
    from prefect_aws.client_parameters import AwsClientParameters

    from dynslice.tasks.common import open_store, store_spec
    from dynslice.tasks.publish import PUBLIC_ENDPOINT, file_links

    with s3_server(monkeypatch) as (fs, bucket), temporary_settings({PREFECT_API_URL: stack.url}):
        endpoint, key, secret = (os.environ[k] for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID",
                                                          "AWS_SECRET_ACCESS_KEY"))
        for name in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            monkeypatch.delenv(name)  # the block is the only source of credentials
        s3fs.S3FileSystem.clear_instance_cache()
        AwsCredentials(aws_access_key_id=key, aws_secret_access_key=secret, region_name="us-east-1",
                       aws_client_parameters=AwsClientParameters(endpoint_url=endpoint)).save("team", overwrite=True)
        store = open_store(store_spec(f"s3://{bucket}/dynslice", "aws-credentials/team"))  # no AWS_* set now
        store.check_access()
        store.export("run-1", {"report.md": b"# report\n", "model/model.safetensors": b"weights"})
        monkeypatch.setenv(PUBLIC_ENDPOINT, endpoint.replace("127.0.0.1", "localhost"))
        links = file_links(store, "run-1")
        assert set(links) == {"report.md", "model/model.safetensors"}
        for name, link in links.items():
            assert link.startswith("http://localhost:") and "Signature=" in link  # signed for the public address
            assert urllib.request.urlopen(link, timeout=10).read() == {"report.md": b"# report\n",
                                                                       "model/model.safetensors": b"weights"}[name]
        assert secret not in "".join(links.values())


@pytest.mark.slow
def test_a_worker_killed_mid_slicing_is_rescheduled_and_publishes_the_same_bytes(stack, lost_worker, first_runs):
    from dynslice.store import ArtifactStore

    run, killed_at = lost_worker["run"], lost_worker["layer"]
    done = stack.wait(run.id, timeout=600, until=lambda s: s.is_completed() or s.is_failed())
    print(f"\nkilled at layer {killed_at}; completed {time.time() - lost_worker['at']:.0f} s later")
    assert done.state.is_completed(), done.state.message
    with stack.client() as client:
        history = [s.name for s in client.read_flow_run_states(run.id)]
    assert "Crashed" in history and "AwaitingRetry" in history and history[-1] == "Completed", history
    killed_store, clean_store = ArtifactStore(lost_worker["store"]), ArtifactStore(stack.team_store)
    (resumed,), (clean,) = killed_store.manifests("slice"), clean_store.manifests("slice")
    assert resumed["result"]["resumed_from_layer"] >= killed_at
    assert resumed["result"]["layers_computed"] <= 12 - killed_at
    model = {name: f for name, f in resumed["files"].items() if name.startswith("model/")}
    assert model == {name: f for name, f in clean["files"].items() if name.startswith("model/")}  # same bytes
    # the PCA spectra hold the same numbers (the resumed loop lists the checkpointed layers in another order)
    spectra = [store.read_json(store.lookup("slice", m["key"]), "spectra.json")
               for store, m in ((killed_store, resumed), (clean_store, clean))]
    assert spectra[0] == spectra[1]


@pytest.mark.slow
def test_nothing_in_prefect_homes_or_stores_is_a_pickle_even_after_a_failed_run(stack, first_runs):
    failed = first_runs["failed"]
    assert failed.state.is_failed() and "not-a-folder" in failed.state.message
    scanned = 0
    for folder in [*stack.homes.values(), stack.team_store, stack.root / "killed-store"]:
        for path in (p for p in folder.rglob("*") if p.is_file()):
            data = path.read_bytes()
            scanned += 1
            assert not re.match(rb"\x80[\x02-\x05]", data), f"{path} is a pickle"
            assert not any(mark in data for mark in PICKLE_MARKS), f"{path} holds a pickle"
    assert scanned > 10
