"""The stage layer: a stage's key changes whenever the code it depends on changes (and only then), and the code a
stage really runs while computing is code its key covers."""

from __future__ import annotations

import sys
import threading

import pytest
import torch

from conftest import TEXT, model_folder
from dynslice.config import CalibrationConfig, EvaluationConfig, ModelConfig, PlanConfig
from dynslice.pipeline import calibration, codeid, evaluate, plan, score
from dynslice.pipeline import slice as slice_stage
from dynslice.pipeline.stage import Output, Stage, run_stage
from dynslice.store import ArtifactStore

STAGES = {m.STAGE.name: m.STAGE for m in (calibration, score, plan, slice_stage, evaluate)}


@pytest.fixture
def fresh_code_ids():
    codeid.closure.cache_clear()
    codeid.code_identity.cache_clear()
    yield
    codeid.closure.cache_clear()
    codeid.code_identity.cache_clear()


_REAL_SOURCE = codeid._source


def _edited(module: str, addition: str):
    real = _REAL_SOURCE

    def source(name: str):
        text, is_package = real(name)
        return (text + addition if name == module else text), is_package
    return source


@pytest.mark.parametrize("name", sorted(STAGES))
def test_any_change_to_code_a_stage_depends_on_changes_its_key(name, fresh_code_ids, monkeypatch):
    stage = STAGES[name]
    inputs = {"x": 1}
    base = stage.key(inputs)
    for module in stage.modules():
        monkeypatch.setattr(codeid, "_source", _edited(module, "\n_edited = 1\n"))
        codeid.closure.cache_clear()
        codeid.code_identity.cache_clear()
        assert stage.key(inputs) != base, f"{name}: editing {module} left the key unchanged"
    monkeypatch.setattr(codeid, "_source", _edited(stage.modules()[0], "\n# a comment\n"))
    codeid.code_identity.cache_clear()
    assert stage.key(inputs) == base  # comments (and docstrings, formatting) never count


def test_stages_depend_on_what_they_compute_not_on_the_rest(fresh_code_ids):
    assert "dynslice.scoring" in STAGES["score"].modules()
    assert "dynslice.scoring" not in STAGES["calibration"].modules()  # capture does not score any more
    assert "dynslice.compress" in STAGES["slice"].modules()
    assert "dynslice.compress" not in STAGES["evaluate"].modules()  # a slice enters evaluate by its key
    assert "dynslice.compress" not in STAGES["plan"].modules()
    for stage in STAGES.values():
        assert not set(stage.modules()) & codeid.NEUTRAL  # the store, config and errors never count


def test_outputs_are_checked_on_publish_and_on_lookup(tmp_path):
    store = ArtifactStore(tmp_path / "store")
    stage = Stage("probe", code=("dynslice.plan",), outputs=("a.json", "model/*"))
    with pytest.raises(Exception, match="no file matches 'model/\\*'"):
        run_stage(store, stage, {}, lambda key: Output({}, {"a.json": b"{}"}))
    with pytest.raises(Exception, match="'b.json' is not a declared output"):
        run_stage(store, stage, {}, lambda key: Output({}, {"a.json": b"{}", "model/w": b"w", "b.json": b"{}"}))
    ref = run_stage(store, stage, {}, lambda key: Output({"n": 1}, {"a.json": b"{}", "model/w": b"w"}))
    assert not ref.cached and ref.result["n"] == 1
    assert run_stage(store, stage, {}, lambda key: pytest.fail("a hit must not compute")).cached
    # a manifest that lacks a declared output (here the weights) is not a hit: the stage computes again
    store.publish("probe", ref.key, inputs={}, result={}, files={"a.json": b"{}"})
    assert not run_stage(store, stage, {}, lambda key: Output({}, {"a.json": b"{}", "model/w": b"w"})).cached


class _ModulesRun:
    """The dynslice modules whose functions run while it is active (every thread)."""

    def __init__(self):
        self.modules: set[str] = set()

    def _profile(self, frame, event, arg):
        if event == "call":
            name = frame.f_globals.get("__name__", "")
            if name.startswith("dynslice"):
                self.modules.add(name)

    def __enter__(self):
        sys.setprofile(self._profile)
        threading.setprofile(self._profile)
        return self

    def __exit__(self, *exc):
        sys.setprofile(None)
        threading.setprofile(None)


def test_what_a_stage_runs_is_covered_by_its_key(tmp_path, monkeypatch, fresh_code_ids):
    """Trace every stage's compute on a tiny model: each module it runs is in the stage's code closure (or is
    neutral infrastructure, or another stage's artifact reader)."""
    monkeypatch.setenv("DYNSLICE_CACHE", str(tmp_path / "cache"))
    torch.manual_seed(0)
    folder, _ = model_folder(tmp_path)
    (tmp_path / "eval.txt").write_text(TEXT[::-1])
    store = ArtifactStore(tmp_path / "store")
    model = ModelConfig(source=str(folder))
    evaluation = EvaluationConfig(ppl=str(tmp_path / "eval.txt"), ppl_seqlen=32, ppl_windows=2, tasks=[],
                                  speed=False)
    runs = {}
    with _ModulesRun() as seen:
        cal = calibration.run(store, model, CalibrationConfig(source=str(tmp_path / "calib.txt"), nsamples=4,
                                                              seqlen=32))
    runs["calibration"] = seen.modules
    with _ModulesRun() as seen:
        scored = score.run(store, model, cal, batch_size=2, device="cpu")
    runs["score"] = seen.modules
    with _ModulesRun() as seen:
        planned = plan.run(store, scored, PlanConfig(planner="dynamic", target=0.25, variation=0.1, round_to=4))
    runs["plan"] = seen.modules
    with _ModulesRun() as seen:
        sliced = slice_stage.run(store, model, cal, planned, batch_size=2, device="cpu")
    runs["slice"] = seen.modules
    with _ModulesRun() as seen:
        evaluate.run(store, model, evaluation, "cpu", sliced)
    runs["evaluate"] = seen.modules
    for name, modules in runs.items():
        allowed = set(STAGES[name].modules()) | codeid.NEUTRAL
        # the Prefect layer's log handler (dynslice.tasks.common) forwards records once a flow test imported it;
        # it sees the library's log lines, not its data, so it is not part of any stage's computation
        orchestration = ("dynslice.tasks", "dynslice.flows")
        uncovered = {m for m in modules - allowed if not m.startswith((codeid.STAGES, *orchestration))}
        assert not uncovered, f"stage {name} ran code its key does not cover: {sorted(uncovered)}"
        assert modules & set(STAGES[name].modules()) - {f"dynslice.pipeline.{name}"}  # the trace saw real work
