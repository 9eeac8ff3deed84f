"""The Prefect pipeline on tiny models: real Prefect (a temporary server), a real local store, real
subprocesses killed with SIGKILL, and a real S3-compatible server (moto) for the bucket test."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import TEXT, forget_prefect_services, model_folder, twelve_layer_folder
from s3server import s3_server
from dynslice.config import load_config
from dynslice.loopstate import LoopState
from dynslice.store import ArtifactStore

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", autouse=True)
def prefect_server():
    """One real Prefect API (temporary server with its own SQLite database) for the in-process runs."""
    from prefect.testing.utilities import prefect_test_harness

    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    forget_prefect_services()  # another module's server may be gone: its address must not linger
    with prefect_test_harness(server_startup_timeout=120):
        yield
    forget_prefect_services()


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    monkeypatch.setenv("DYNSLICE_CACHE", str(tmp_path / "cache"))
    model_folder(tmp_path)
    return tmp_path


def config(ws: Path, store: str | None = None, **sections) -> dict:
    cfg = {"model": {"source": str(ws / "dense")},
           "calibration": {"source": str(ws / "calib.txt"), "nsamples": 8, "seqlen": 32, "batch_size": 4},
           "plan": {"planner": "dynamic", "target": 0.25, "variation": 0.1, "round_to": 4},
           "evaluation": {"ppl": str(ws / "eval.txt"), "ppl_seqlen": 32, "ppl_windows": 4, "tasks": [],
                          "speed": False},
           "store": store or str(ws / "store")}
    for name, values in sections.items():
        cfg[name] = {**cfg.get(name, {}), **values}
    return cfg


def run_compress(cfg: dict) -> dict:
    from dynslice.flows.compress import compress

    return compress(load_config(cfg))


def executions(store: ArtifactStore) -> dict[tuple[str, str], str]:
    """(stage, key) -> id of the execution that produced it: a new id means the stage ran."""
    return {(m["stage"], m["key"]): m["execution"] for m in store.manifests()}


def ran(before: dict, after: dict) -> list[str]:
    return sorted(stage for (stage, key), execution in after.items() if before.get((stage, key)) != execution)


def test_failed_evaluate_reruns_only_evaluate(workspace):
    ws = workspace
    cfg = config(ws)
    with pytest.raises(Exception, match="eval.txt"):
        run_compress(cfg)  # the evaluation text is missing: evaluate fails after slicing
    store = ArtifactStore(ws / "store")
    before = executions(store)
    assert sorted(stage for stage, _ in before) == ["calibration", "plan", "score", "slice"]

    (ws / "eval.txt").write_text(TEXT[::-1])
    result = run_compress(cfg)
    after = executions(store)
    assert ran(before, after) == ["evaluate", "evaluate"]  # dense and sliced; nothing before them

    clean = run_compress(config(ws, store=str(ws / "clean")))
    assert result["refs"]["slice"]["files"] == clean["refs"]["slice"]["files"]  # byte-identical model
    for name in ("slice", "sliced_eval", "dense_eval"):  # evaluation.json also holds timings: compare results
        got = {k: v for k, v in result["refs"][name]["result"].items() if k != "wall_s"}
        want = {k: v for k, v in clean["refs"][name]["result"].items() if k != "wall_s"}
        assert got == want, name
    report = Path(result["report"].removeprefix("file://")).read_text()
    assert "| perplexity |" in report and "removed)" in report


def test_library_log_lines_reach_the_run_in_prefect(workspace):
    """What the library logs ("calibration: computing ...", the layer loop) shows in the UI under its run."""
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    from dynslice.flows.compress import compress

    ws = workspace
    (ws / "eval.txt").write_text(TEXT[::-1])
    state = compress(load_config(config(ws)), return_state=True)
    assert state.is_completed()
    flow_run_id = state.state_details.flow_run_id

    async def logs():
        async with get_client() as client:
            return await client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))

    deadline = time.time() + 30
    while True:  # logs reach the API in batches, after the run: wait for the last one
        records = asyncio.run(logs())
        library = [r for r in records if r.name.startswith("dynslice.") and not r.name.startswith("dynslice.tasks")]
        if any(r.name == "dynslice.compress" and r.message.startswith("sliced ") for r in library) or \
                time.time() > deadline:
            break
        time.sleep(1)
    messages = " | ".join(r.message for r in library)
    assert any(r.message.startswith("slice: computing") and r.task_run_id for r in library), messages
    assert any(r.name == "dynslice.compress" and r.message.startswith("sliced ") for r in library), messages


def test_scoring_parameter_recomputes_from_scoring_on(workspace):
    ws = workspace
    (ws / "eval.txt").write_text(TEXT[::-1])
    first = run_compress(config(ws))
    store = ArtifactStore(ws / "store")
    before = executions(store)
    second = run_compress(config(ws, plan={"metric": "angular"}))
    after = executions(store)
    stages = ran(before, after)
    assert "calibration" not in stages and "score" not in stages  # one dense pass measured every metric
    assert "plan" in stages
    widths_changed = first["refs"]["plan"]["result"]["widths"] != second["refs"]["plan"]["result"]["widths"]
    assert ("slice" in stages) == widths_changed  # the slice is keyed by the widths, not by how they were chosen
    assert second["refs"]["calibration"]["cached"] and second["refs"]["score"]["cached"]


def test_corrupted_artifact_is_recomputed_not_used(workspace):
    ws = workspace
    (ws / "eval.txt").write_text(TEXT[::-1])
    first = run_compress(config(ws))
    store = ArtifactStore(ws / "store")
    digest = first["refs"]["slice"]["files"]["model/model.safetensors"]
    blob = Path(store.path("blobs", digest))
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0x01  # one flipped bit in the middle of the weights
    blob.write_bytes(bytes(data))
    before = executions(store)
    second = run_compress(config(ws))
    assert ran(before, executions(store)) == ["slice"]
    assert second["refs"]["slice"]["files"]["model/model.safetensors"] == digest
    assert store._blob_ok(digest)  # the blob holds the right bytes again


def _cli(args: list[str], env: dict, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "dynslice", *args], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kwargs)


def _fresh_env(tmp: Path, name: str, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(tmp / f"prefect-{name}"), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               DYNSLICE_CACHE=str(tmp / "cache"), OMP_NUM_THREADS="1", **extra)
    return env


def test_sigkill_mid_slicing_resumes_to_identical_bytes(tmp_path):
    twelve_layer_folder(tmp_path)
    cfg = config(tmp_path, calibration={"nsamples": 64, "seqlen": 96, "batch_size": 8})
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))

    # own process group: SIGKILL takes the run and the temporary Prefect server it started, like a lost node
    proc = _cli(["run", "compress", "--config", str(tmp_path / "cfg.yaml")], _fresh_env(tmp_path, "a"),
                start_new_session=True)
    checkpoints = tmp_path / "store" / "checkpoints" / "slice"
    killed_at, deadline = None, time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        for state in checkpoints.glob("*/state.json"):
            done = LoopState.progress(str(state.parent))  # 0 while the file is being replaced
            if 2 <= done < 10:
                os.killpg(proc.pid, signal.SIGKILL)
                killed_at = done
        if killed_at:
            break
        time.sleep(0.005)
    proc.wait(timeout=60)
    assert killed_at is not None, "the run finished before it could be killed mid-loop:\n" + proc.stdout.read()
    assert not ArtifactStore(tmp_path / "store").manifests("slice")  # nothing half-published

    again = _cli(["run", "compress", "--config", str(tmp_path / "cfg.yaml")], _fresh_env(tmp_path, "b"))
    output, _ = again.communicate(timeout=600)
    assert again.returncode == 0, output
    (resumed,) = ArtifactStore(tmp_path / "store").manifests("slice")
    assert resumed["result"]["resumed_from_layer"] >= killed_at
    assert resumed["result"]["layers_computed"] <= 12 - killed_at
    assert not list(checkpoints.glob("*/state.json"))  # checkpoint dropped once published

    clean = run_compress(dict(cfg, store=str(tmp_path / "clean")))
    assert clean["refs"]["slice"]["result"]["resumed_from_layer"] == 0
    assert clean["refs"]["slice"]["files"]["model/model.safetensors"] == \
        resumed["files"]["model/model.safetensors"]["sha256"]


def test_s3_store_shared_by_two_fresh_processes(workspace, monkeypatch):
    ws = workspace
    (ws / "eval.txt").write_text(TEXT[::-1])
    with s3_server(monkeypatch) as (fs, bucket):  # credentials and endpoint in the environment only
        _two_processes_share_the_bucket(ws, fs, bucket)


def _two_processes_share_the_bucket(ws, fs, bucket: str) -> None:
    (ws / "cfg.yaml").write_text(yaml.safe_dump(config(ws, store=f"s3://{bucket}/dynslice")))
    secret = os.environ["AWS_SECRET_ACCESS_KEY"]
    outputs = []
    for name in ("first", "second"):  # separate PREFECT_HOMEs: no shared Prefect database
        proc = _cli(["run", "compress", "--config", str(ws / "cfg.yaml")], _fresh_env(ws, name))
        output, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, output
        outputs.append(output)

    fs.invalidate_cache()
    keys = fs.find(f"{bucket}/dynslice")
    for stage in ("calibration", "score", "plan", "slice", "evaluate"):
        assert any(k.startswith(f"{bucket}/dynslice/manifests/{stage}/") for k in keys), stage
    assert any(k.startswith(f"{bucket}/dynslice/blobs/") for k in keys)
    assert any(k.endswith("/report.md") and "/runs/" in k for k in keys)
    assert any(k.endswith("/model/model.safetensors") and "/runs/" in k for k in keys)
    assert outputs[0].count("Cached(") == 0
    assert outputs[1].count("Cached(") == 6  # calibration, score, plan, slice and both evaluations
    assert secret not in "".join(outputs)
    for key in keys:
        if key.endswith(".json") or key.endswith(".md"):
            assert secret.encode() not in fs.cat_file(key)


def test_sweep_shares_calibration_and_picks_the_lowest_held_out_perplexity(workspace):
    from dynslice.flows.sweep import sweep

    from dynslice.config import SweepConfig

    ws = workspace
    (ws / "eval.txt").write_text(TEXT[::-1])
    (ws / "heldout.txt").write_text(TEXT[100:] + TEXT[:100])
    cfg = config(ws, selection={"source": str(ws / "heldout.txt"), "split": None, "seqlen": 32, "windows": 4})
    cfg["grid"] = {"targets": [0.25, 0.5], "variations": [0.1], "planners": ["constant", "dynamic"],
                   "budgets": ["mean"]}
    result = sweep(load_config(cfg, SweepConfig))
    points = result["points"]
    assert len(points) == 4 and len({p["slice"] for p in points}) >= 2
    assert result["best"]["perplexity"] == min(p["perplexity"] for p in points)
    store = ArtifactStore(ws / "store")
    assert len(store.manifests("calibration")) == 1 and len(store.manifests("score")) == 1  # shared by the grid
    assert Path(result["report"].removeprefix("file://")).is_file()


def test_a_failed_stage_stops_the_heavy_stages_after_it(workspace):
    """Calibration fails (its text is missing): nothing after it runs, not even the dense evaluation."""
    ws = workspace
    (ws / "eval.txt").write_text(TEXT[::-1])
    cfg = config(ws, calibration={"source": str(ws / "no-such-calib.txt")})
    with pytest.raises(Exception, match="no-such-calib"):
        run_compress(cfg)
    assert ArtifactStore(ws / "store").manifests() == []  # no stage published anything, no evaluation ran


def test_recovery_runs_as_a_cached_stage_and_its_model_is_published(workspace):
    ws = workspace
    (ws / "eval.txt").write_text(TEXT[::-1])
    cfg = config(ws, recover={"enabled": True, "source": str(ws / "calib.txt"), "split": None, "nsamples": 8,
                              "seqlen": 32, "steps": 3, "batch_size": 2, "warmup_steps": 1})
    first = run_compress(cfg)
    recovered = first["refs"]["recover"]
    assert recovered["result"]["steps"] == 3 and recovered["result"]["loss_end"] is not None
    assert recovered["files"]["model/model.safetensors"] != first["refs"]["slice"]["files"]["model/model.safetensors"]
    exported = Path(first["model"].removeprefix("file://")) / "model.safetensors"
    from dynslice.hashing import sha256_file

    assert sha256_file(exported) == recovered["files"]["model/model.safetensors"]  # the run ships the recovered model
    second = run_compress(cfg)
    assert second["refs"]["recover"]["cached"] and second["refs"]["sliced_eval"]["cached"]


def test_the_flow_pushes_the_run_to_the_hub_when_asked(workspace, monkeypatch):
    from unittest import mock

    from huggingface_hub import HfApi

    ws = workspace
    (ws / "eval.txt").write_text(TEXT[::-1])
    api = mock.create_autospec(HfApi, instance=True)
    api.list_repo_files.return_value = []
    api.create_commit.return_value = mock.Mock(commit_url="https://huggingface.co/team/tiny/commit/abc")
    monkeypatch.setattr("dynslice.hub._client", lambda token: api)
    result = run_compress(config(ws, hub={"repo_id": "team/tiny-sliced"}))
    assert result["hub"] == "https://huggingface.co/team/tiny/commit/abc"
    (call,) = api.create_commit.call_args_list
    uploaded = sorted(op.path_in_repo for op in call.args[1])
    assert "README.md" in uploaded and "model.safetensors" in uploaded and "config.json" in uploaded


@pytest.mark.slow
def test_load_a_sweep_of_twenty_points_through_an_s3_store(workspace, monkeypatch):
    """Load test: 20 grid points through the flow against an S3-compatible server; every artifact present and
    every manifest verifying afterwards. The wall time is printed for the record."""
    from dynslice.config import SweepConfig
    from dynslice.flows.sweep import sweep

    ws = workspace
    (ws / "eval.txt").write_text(TEXT[::-1])
    (ws / "heldout.txt").write_text(TEXT[100:] + TEXT[:100])
    with s3_server(monkeypatch) as (fs, bucket):
        cfg = config(ws, store=f"s3://{bucket}/dynslice",
                     selection={"source": str(ws / "heldout.txt"), "split": None, "seqlen": 32, "windows": 2})
        cfg["grid"] = {"targets": [0.1, 0.2, 0.3, 0.4, 0.5], "variations": [0.02, 0.05, 0.08],
                       "planners": ["constant", "dynamic"], "budgets": ["mean"]}
        start = time.time()
        result = sweep(load_config(cfg, SweepConfig))
        wall = time.time() - start
        assert len(result["points"]) == 20
        store = ArtifactStore(f"s3://{bucket}/dynslice")
        manifests = store.manifests()
        from dynslice.pipeline import evaluate, plan, slice as slice_stage

        for m in manifests:
            stage = {"slice": slice_stage.STAGE, "plan": plan.STAGE, "evaluate": evaluate.STAGE}.get(m["stage"])
            assert store.lookup(m["stage"], m["key"], stage.outputs if stage else None) is not None, m["stage"]
        assert len({p["slice"] for p in result["points"]}) == len(store.manifests("slice"))
        print(f"\nload test: 20 grid points, {len(manifests)} artifacts, {wall:.0f} s")


def test_auto_with_a_parameter_budget_weighs_layer_removal_against_slicing(workspace):
    ws = workspace
    (ws / "eval.txt").write_text(TEXT[::-1])
    (ws / "heldout.txt").write_text(TEXT[100:] + TEXT[:100])
    cfg = config(ws, selection={"source": str(ws / "heldout.txt"), "split": None, "seqlen": 32, "windows": 4},
                 plan={"planner": "auto", "target": 0.1, "budget": "params", "variation": None,
                       "variations": [0.0, 0.1]})
    result = run_compress(cfg)
    store = ArtifactStore(ws / "store")
    plans = {m["result"]["planner"]: m["result"] for m in store.manifests("plan")}
    assert set(plans) == {"dynamic", "removal", "greedy"}
    assert any(plans["greedy"][k] for k in ("removed", "removed_attention", "removed_mlp"))  # layers or sublayers
    assert all(p["achieved_param_reduction"] >= 0.1 for p in plans.values())  # every candidate at the budget
    held_out = {m["inputs"]["model"]: m["result"]["perplexity"] for m in store.manifests("evaluate")
                if m["inputs"]["evaluation"]["ppl"] == str(ws / "heldout.txt")}
    slices = store.manifests("slice")
    assert len(held_out) == len(slices) >= 2  # each distinct model measured once on the held-out text
    assert any(m["result"].get("removed") for m in slices)  # a removal candidate was built and measured
    chosen = f"slice:{result['refs']['slice']['key']}"
    assert held_out[chosen] == min(held_out.values())
