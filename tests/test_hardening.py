"""A shared bucket is untrusted input and a slicing run costs hours: paths stay in their root, checkpoints and
blobs are never used unverified, manifests are checked, transient failures are told from permanent ones, two
runs of one key do not collide, and exports are replaced whole."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import dynslice
from conftest import calibration, tiny_model
from dynslice.errors import SourceError, StoreError
from dynslice.loopstate import LoopState
from dynslice.store import ArtifactStore, Blob
from s3server import s3_server

REPO = Path(__file__).resolve().parents[1]


# -- paths from a listing or a manifest stay inside their root --------------------------------------------

def test_a_bucket_object_named_with_dotdot_is_never_written(tmp_path, monkeypatch):
    from dynslice.sources import fetch_uri

    with s3_server(monkeypatch) as (fs, bucket):
        fs.pipe(f"{bucket}/mdl/config.json", b"{}")
        fs.pipe(f"{bucket}/mdl/../../../../tmp/evil-{tmp_path.name}", b"owned")  # a key S3 stores as it is
        with pytest.raises(SourceError, match="leaves its folder"):
            fetch_uri(f"s3://{bucket}/mdl", cache_dir=tmp_path / "cache")
    assert not Path(f"/tmp/evil-{tmp_path.name}").exists()
    assert not list((tmp_path / "cache").rglob("evil*")) if (tmp_path / "cache").exists() else True


@pytest.mark.parametrize("name", ["../x", "/etc/passwd", "a/../../x", "a\\..\\x", "./x", "a//b", "a\0b"])
def test_relative_names_are_confined(name):
    from dynslice.sources import safe_relative

    with pytest.raises(SourceError):
        safe_relative(name, "s3://b/m")


def test_fetch_refuses_a_symlink_that_leads_out_of_the_folder(tmp_path):
    store = ArtifactStore(tmp_path / "store")
    ref = store.publish("slice", "k", inputs={}, result={}, files={"model/w.bin": b"weights"})
    folder = tmp_path / "fetch"
    folder.mkdir()
    (tmp_path / "outside").mkdir()
    (folder / "model").symlink_to(tmp_path / "outside")  # planted: model/ points elsewhere
    with pytest.raises(StoreError, match="escapes"):
        store.fetch(ref, folder)
    assert not (tmp_path / "outside" / "w.bin").exists()


# -- checkpoints ------------------------------------------------------------------------------------------

def _crash_after(layer: int):
    class Crash(Exception):
        pass

    def arm(model):
        spec = dynslice.spec_for(model)
        target = model.get_submodule(spec.layers)[layer].get_submodule(spec.attn)

        def hook(module, args, kwargs):
            raise Crash(f"killed in layer {layer}")
        target.register_forward_pre_hook(hook, with_kwargs=True)
    return arm, Crash


def _reference_bytes(tmp_path, plan, cal) -> bytes:
    model = tiny_model("llama")
    dynslice.slice_model(model, cal, plan, batch_size=2, progress=False)
    dynslice.save_sliced(model, tmp_path / "reference")
    return (tmp_path / "reference" / "model.safetensors").read_bytes()


@pytest.mark.parametrize("damage", ["flip a bit in a finished layer", "truncate the newest carry",
                                    "drop the newest carry"])
def test_a_damaged_checkpoint_is_never_resumed_from(tmp_path, damage, caplog):
    cal = calibration(n=5)
    model = tiny_model("llama")
    plan = dynslice.SlicePlan.from_widths([28, 24, 28, 32])
    expected = _reference_bytes(tmp_path, plan, cal)
    state = tmp_path / "state"
    arm, Crash = _crash_after(2)
    crashed = tiny_model("llama")
    arm(crashed)
    with pytest.raises(Crash):
        dynslice.slice_model(crashed, cal, plan, batch_size=2, state_dir=str(state), progress=False)
    assert LoopState.progress(str(state)) == 2
    if damage.startswith("flip"):
        data = bytearray((state / "layer-0001.safetensors").read_bytes())
        data[-1] ^= 0x01
        (state / "layer-0001.safetensors").write_bytes(bytes(data))
    elif damage.startswith("truncate"):
        with open(state / "carry-0002.safetensors", "r+b") as f:
            f.truncate(50)
    else:
        (state / "carry-0002.safetensors").unlink()
    with caplog.at_level("WARNING", logger="dynslice.loopstate"):
        dynslice.slice_model(model, cal, plan, batch_size=2, state_dir=str(state), progress=False)
    assert "unusable" in caplog.text  # reported, then recomputed from an older checkpoint (or the start)
    dynslice.save_sliced(model, tmp_path / "resumed")
    assert (tmp_path / "resumed" / "model.safetensors").read_bytes() == expected


def test_a_damaged_recovery_checkpoint_is_reported_and_training_starts_over(tmp_path, caplog):
    from dynslice.config import RecoverConfig
    from dynslice.recover import recover

    cal = calibration(n=6, t=16)
    settings = RecoverConfig(enabled=True, steps=4, batch_size=2, warmup_steps=1, checkpoint_every=2, dropout=0.0)

    def sliced():
        model = tiny_model("llama")
        dynslice.slice_model(model, cal, dynslice.SlicePlan.from_widths([28, 24, 28, 32]), progress=False)
        return model

    reference = sliced()
    recover(reference, cal, settings, progress=False)
    state, crashed = tmp_path / "state", sliced()
    calls = [0]

    def crash_on_the_third_step(module, args):
        calls[0] += 1
        if calls[0] == 3:
            raise RuntimeError("killed")
    handle = crashed.get_input_embeddings().register_forward_pre_hook(crash_on_the_third_step)
    with pytest.raises(RuntimeError, match="killed"):
        recover(crashed, cal, settings, state_dir=str(state), progress=False)
    handle.remove()
    (checkpoint,) = state.glob("train-*.safetensors")  # after step 2
    data = bytearray(checkpoint.read_bytes())
    data[-1] ^= 0x01
    checkpoint.write_bytes(bytes(data))
    with caplog.at_level("WARNING", logger="dynslice.trainstate"):
        stats = recover(crashed, cal, settings, state_dir=str(state), progress=False)
    assert "unusable" in caplog.text and stats.resumed_from == 0  # reported, then trained from the start
    for (name, a), (_, b) in zip(reference.state_dict().items(), crashed.state_dict().items()):
        assert torch.equal(a, b), name


# -- blobs, manifests -------------------------------------------------------------------------------------

def test_a_blob_flipped_with_its_mtime_kept_is_caught(tmp_path):
    store = ArtifactStore(tmp_path / "store")
    ref = store.publish("plan", "k", inputs={}, result={}, files={"plan.json": b'{"widths": [1]}'})
    assert store.lookup("plan", "k") is not None  # verified once: remembered against the file's stamp
    blob = Path(store.path("blobs", ref.files["plan.json"]))
    stat = blob.stat()
    blob.write_bytes(b'{"widths": [2]}')  # same size
    os.utime(blob, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert store.lookup("plan", "k") is None  # ctime moved: hashed again, mismatch, a miss (recompute)


def test_a_corrupt_read_is_not_sticky(tmp_path, monkeypatch):
    store = ArtifactStore(tmp_path / "store")
    ref = store.publish("plan", "k", inputs={}, result={}, files={"plan.json": b'{"a": 1}'})
    assert store.lookup("plan", "k") is not None
    blob = Path(store.path("blobs", ref.files["plan.json"]))
    stamp = store._content_stamp(str(blob))
    blob.write_bytes(b'{"a": 2}')
    monkeypatch.setattr(store, "_content_stamp", lambda path: stamp)  # a store that cannot tell the rewrite
    with pytest.raises(StoreError, match="run again to recompute"):
        store.read_bytes(ref, "plan.json")
    assert store.lookup("plan", "k") is None  # the memo was forgotten: the next run recomputes


@pytest.mark.parametrize("manifest", [
    {}, {"stage": "slice", "key": "k", "result": {}, "files": {"model/w": {"size": 1}}},
    {"stage": "slice", "key": "k", "result": {}, "files": {"spectra.json": {"sha256": "0" * 64}}},
    {"stage": "slice", "key": "other", "result": {}, "files": {}},
    [1, 2, 3],
])
def test_malformed_manifests_are_misses(tmp_path, manifest, caplog):
    store = ArtifactStore(tmp_path / "store")
    store.publish("slice", "k", inputs={}, result={}, files={"model/w": b"w", "spectra.json": b"[]"})
    store.fs.pipe_file(store.path("manifests", "slice", "k.json"), json.dumps(manifest).encode())
    with caplog.at_level("WARNING"):
        assert store.lookup("slice", "k", ("model/*", "spectra.json")) is None
    assert "malformed" in caplog.text


# -- transient against permanent --------------------------------------------------------------------------

def test_s3_failures_are_classified():
    from botocore.exceptions import (ClientError, ConnectionClosedError, EndpointConnectionError,
                                     NoCredentialsError, ReadTimeoutError)

    from dynslice.errors import ConfigError
    from dynslice.storeaccess import is_transient

    transient = [EndpointConnectionError(endpoint_url="http://x"), ConnectionClosedError(endpoint_url="http://x"),
                 ReadTimeoutError(endpoint_url="http://x"), TimeoutError(),
                 ClientError({"Error": {"Code": "SlowDown"}}, "PutObject"),
                 OSError(5, "Input/output error")]
    permanent = [ClientError({"Error": {"Code": "NoSuchBucket"}}, "PutObject"),
                 ClientError({"Error": {"Code": "AccessDenied"}}, "PutObject"), PermissionError("Forbidden"),
                 FileNotFoundError("x"), NoCredentialsError(), ConfigError("bad"), ValueError("bad")]
    assert all(is_transient(e) for e in transient)
    assert not any(is_transient(e) for e in permanent)
    wrapped = OSError("s3fs gave up")
    wrapped.__cause__ = EndpointConnectionError(endpoint_url="http://x")
    assert is_transient(wrapped)  # s3fs translates; the cause still tells


# -- two runs of one key ----------------------------------------------------------------------------------

_RUN_SLICE = textwrap.dedent("""
    import json, logging, sys
    logging.basicConfig(level=logging.INFO)
    sys.path.insert(0, {tests!r})
    from dynslice.config import CalibrationConfig, ModelConfig, PlanConfig
    from dynslice.pipeline import calibration, plan, score, slice as slice_stage
    from dynslice.store import ArtifactStore
    store = ArtifactStore({store!r})
    model = ModelConfig(source={model!r})
    cal = calibration.run(store, model, CalibrationConfig(source={calib!r}, nsamples=64, seqlen=96))
    scored = score.run(store, model, cal, batch_size=4, device="cpu")
    planned = plan.run(store, scored, PlanConfig(planner="constant", target=0.25, round_to=4))
    ref = slice_stage.run(store, model, cal, planned, batch_size=4, device="cpu")
    print(json.dumps({{"key": ref.key, "cached": ref.cached, "files": ref.files}}))
""")


def test_two_identical_runs_on_one_store_end_with_one_result(tmp_path):
    """Started together: one run takes the slice's lease and computes; the other waits, then finds it."""
    import transformers

    from conftest import TEXT, tiny_tokenizer

    torch.manual_seed(0)
    folder = tmp_path / "dense"  # 12 layers: slicing lasts long enough for the runs to meet
    config = transformers.LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=12,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    (tmp_path / "calib.txt").write_text(TEXT)
    script = _RUN_SLICE.format(tests=str(REPO / "tests"), store=str(tmp_path / "store"), model=str(folder),
                               calib=str(tmp_path / "calib.txt"))
    env = dict(os.environ, DYNSLICE_CACHE=str(tmp_path / "cache"), DYNSLICE_LEASE_SECONDS="20",
               OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    procs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env) for _ in range(2)]
    outputs = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-3000:]
    results = [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]
    assert results[0]["files"] == results[1]["files"] and results[0]["key"] == results[1]["key"]
    store = ArtifactStore(tmp_path / "store")
    assert len(store.manifests("slice")) == 1
    assert sorted(r["cached"] for r in results) == [False, True]  # one computed, the other waited and reused it
    assert "waiting for it" in "".join(err for _, err in outputs)
    assert not store.fs.exists(store.path("checkpoints", "slice", results[0]["key"]))


# -- exports are replaced whole ---------------------------------------------------------------------------

def _export(store: ArtifactStore, files: dict) -> None:
    store.export("run", {name: Blob(store.publish("x", f"k{i}", inputs={}, result={},
                                                  files={"f": content}).files["f"])
                         for i, (name, content) in enumerate(files.items())})


@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_killed_republish_leaves_the_previous_export_intact_or_unmanifested(tmp_path, monkeypatch, where):
    def run(store: ArtifactStore, read):
        _export(store, {"model/model.safetensors": b"old weights", "report.md": b"old"})
        before = {name: read(store, name) for name in ("model/model.safetensors", "report.md", "MANIFEST.json")}
        calls = []
        real = store._write_export_file

        def dies_midway(target, content, verify):
            calls.append(target)
            if len(calls) == 2:
                raise OSError(5, "killed")
            return real(target, content, verify)
        monkeypatch.setattr(store, "_write_export_file", dies_midway)
        with pytest.raises(OSError):
            _export(store, {"model/model.safetensors": b"new weights", "report.md": b"new"})
        monkeypatch.undo()
        return before

    def read(store, name):
        try:
            return store.fs.cat_file(store.path("runs", "run", name))
        except FileNotFoundError:
            return None

    if where == "local":
        store = ArtifactStore(tmp_path / "store")
        before = run(store, read)
        # built aside and swapped in at once: the old export is untouched
        assert {n: read(store, n) for n in before} == before
    else:
        with s3_server(monkeypatch) as (fs, bucket):
            store = ArtifactStore(f"s3://{bucket}/dynslice")
            before = run(store, read)
            # one object at a time: the half-replaced export has no manifest, so nobody takes it as complete
            assert read(store, "MANIFEST.json") is None
            _export(store, {"model/model.safetensors": b"new weights", "report.md": b"new"})
            manifest = json.loads(read(store, "MANIFEST.json"))
            assert sorted(manifest["files"]) == ["model/model.safetensors", "report.md"]
            assert read(store, "report.md") == b"new"


def test_export_refuses_a_corrupt_blob(tmp_path):
    store = ArtifactStore(tmp_path / "store")
    digest = store.publish("x", "k", inputs={}, result={}, files={"f": b"bytes"}).files["f"]
    Path(store.path("blobs", digest)).write_bytes(b"other")
    with pytest.raises(StoreError, match="missing or corrupt"):
        store.export("run", {"f": Blob(digest)})
    assert not store.fs.exists(store.path("runs", "run"))


def test_the_head_fold_runs_in_chunks_and_stays_exact(monkeypatch):
    """The head fold (V x D) runs a chunk of rows at a time, in place: same result as the whole-matrix fold."""
    from dynslice import fusion

    monkeypatch.setattr(fusion, "_ROW_CHUNK", 7)  # several chunks, the last one short (96 rows)
    model = tiny_model("qwen2")  # float64, untied head
    before = model.lm_head.weight.detach().clone()
    scale = model.model.norm.weight.detach().clone()
    with torch.no_grad():
        fusion.fuse_norms(model, dynslice.spec_for(model))
    torch.testing.assert_close(model.lm_head.weight, before * scale, rtol=0, atol=1e-15)
