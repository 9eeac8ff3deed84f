"""The artifact store: manifests written last, hashes verified, keys that cannot escape the root."""

import json

import pytest

from dynslice.store import ArtifactStore, Blob, StoreError, stage_key


@pytest.fixture
def store(tmp_path):
    return ArtifactStore(tmp_path / "store")


def test_publish_then_lookup(store, tmp_path):
    local = tmp_path / "weights.bin"
    local.write_bytes(b"\x00\x01" * 1000)
    ref = store.publish("slice", "k1", inputs={"a": 1}, result={"n": 2},
                        files={"model/weights.bin": local, "notes.json": b'{"x": 1}'})
    found = store.lookup("slice", "k1")
    assert found == ref and found.cached and not ref.cached
    assert store.read_json(found, "notes.json") == {"x": 1}
    (manifest,) = store.manifests("slice")
    assert manifest["inputs"] == {"a": 1} and manifest["key"] == "k1"
    fetched = store.fetch(found, tmp_path / "copy")
    assert (fetched / "model/weights.bin").read_bytes() == local.read_bytes()


def test_flipped_byte_is_a_miss(store):
    ref = store.publish("score", "k", inputs={}, result={}, files={"scores.json": b"[1, 2, 3]"})
    blob = store.path("blobs", ref.files["scores.json"])
    store.fs.pipe_file(blob, b"[1, 2, 4]")
    assert store.lookup("score", "k") is None
    with pytest.raises(StoreError, match="sha256"):
        store.read_bytes(ref, "scores.json")
    # republishing the same content repairs the blob
    store.publish("score", "k", inputs={}, result={}, files={"scores.json": b"[1, 2, 3]"})
    assert store.lookup("score", "k") is not None


def test_torn_manifest_is_a_miss(store):
    store.publish("plan", "k", inputs={}, result={}, files={})
    store.fs.pipe_file(store.path("manifests", "plan", "k.json"), b'{"stage": "pl')
    assert store.lookup("plan", "k") is None


def test_files_without_a_manifest_are_not_an_artifact(store):
    store.fs.pipe_file(store.path("blobs", "abc"), b"data")
    assert store.lookup("plan", "abc") is None


@pytest.mark.parametrize("bad", ["../escape", "a/b", ".hidden", "", "x y"])
def test_keys_cannot_escape_the_root(store, bad):
    with pytest.raises(StoreError):
        store.publish("plan", bad, inputs={}, result={})
    with pytest.raises(StoreError):
        store.export(bad, {"a.txt": b"x"})


def test_export_copies_blobs_and_writes_a_manifest(store):
    ref = store.publish("plan", "k", inputs={}, result={}, files={"plan.json": b"{}"})
    url = store.export("run-1", {"plan.json": Blob(ref.files["plan.json"]), "report.md": b"# hi"})
    assert url.endswith("/runs/run-1")
    manifest = json.loads(store.fs.cat_file(store.path("runs", "run-1", "MANIFEST.json")))
    assert manifest["files"]["plan.json"] == ref.files["plan.json"]
    assert store.fs.cat_file(store.path("runs", "run-1", "report.md")) == b"# hi"


def test_stage_key_depends_on_every_input():
    base = stage_key("score", "1", {"capture": "c", "metric": "cosine"})
    assert base == stage_key("score", "1", {"metric": "cosine", "capture": "c"})  # order-free
    assert base != stage_key("score", "2", {"capture": "c", "metric": "cosine"})  # code version
    assert base != stage_key("score", "1", {"capture": "c", "metric": "angular"})
    assert base != stage_key("plan", "1", {"capture": "c", "metric": "cosine"})


def test_a_manifest_cannot_write_outside_the_fetch_folder(store, tmp_path):
    """A shared bucket is untrusted: a crafted file name in a manifest is a miss, never a write elsewhere."""
    ref = store.publish("slice", "k", inputs={}, result={}, files={"model/w.bin": b"weights"})
    (manifest,) = store.manifests("slice")
    manifest["files"] = {"model/../../../evil.sh": manifest["files"]["model/w.bin"]}
    store.fs.pipe_file(store.path("manifests", "slice", "k.json"), json.dumps(manifest).encode())
    assert store.lookup("slice", "k") is None
    forged = type(ref)("slice", "k", store.uri, {"../evil.sh": ref.files["model/w.bin"]})
    with pytest.raises(StoreError, match="escapes"):
        store.fetch(forged, tmp_path / "fetch")
    assert not (tmp_path / "evil.sh").exists()


def test_republishing_a_run_drops_its_old_files(store):
    store.export("run", {"model/model.safetensors": b"old single file"})
    store.export("run", {"model/model-00001-of-00002.safetensors": b"new",
                         "model/model-00002-of-00002.safetensors": b"2"})
    assert not store.fs.exists(store.path("runs", "run", "model", "model.safetensors"))


def test_verified_blobs_are_not_read_again_until_rewritten(store, monkeypatch, tmp_path):
    """A hit on a big artifact must not download it each time; a rewritten blob is hashed again."""
    monkeypatch.setenv("DYNSLICE_CACHE", str(tmp_path / "cache"))
    ref = store.publish("slice", "k", inputs={}, result={}, files={"model.bin": b"weights" * 1000})
    assert store.lookup("slice", "k") is not None  # hashes the blob once and remembers it
    opened = []
    real_open = store.fs.open
    def counting_open(path, *args, **kwargs):
        if "/blobs/" in path:
            opened.append(path)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(store.fs, "open", counting_open)
    assert store.lookup("slice", "k") is not None
    assert opened == []  # served by the memo: same size and mtime as when it was verified
    blob = store.path("blobs", ref.files["model.bin"])
    data = bytearray(store.fs.cat_file(blob))
    data[10] ^= 0x01
    store.fs.pipe_file(blob, bytes(data))  # same size, new mtime
    assert store.lookup("slice", "k") is None
    assert opened  # it was read and hashed again
