"""Artifact store over fsspec: a local folder by default, `s3://` (s3fs) or any fsspec URI for teams.

Layout under the root URI:
    blobs/<sha256>                       file contents, content-addressed (immutable)
    manifests/<stage>/<key>.json         one published artifact: its files (name -> sha256, size), its
                                         small JSON result and the inputs its key was computed from
    tmp/<uuid>                           writes in flight; moved to blobs/ once complete
    checkpoints/<stage>/<key>/           resumable state of long stages (removed once published)
    runs/<name>/...                      human-readable exports (report, model folder, plots)

A stage's key is the sha256 of its inputs (model identity, data identity, the stage's parameters, the
stage's code version). Blobs are written first, the manifest last: a reader trusts an artifact only
through its manifest and verifies every blob's sha256 on lookup, so a torn write or a flipped byte is a
cache miss (the stage recomputes), never a silent use. Nothing here unpickles anything. Credentials come
from the environment (or fsspec `storage_options` given by the caller) and are never written.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import logging
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fsspec

from dynslice import atomic
from dynslice.errors import StoreError
from dynslice.hashing import canonical_json, sha256_file
from dynslice.locations import Memo, stat_stamp
from dynslice.storeaccess import credential_source, is_transient

log = logging.getLogger(__name__)

_CHUNK = 1 << 22
_SAFE = set("abcdefghijklmnopqrstuvwxyz0123456789-_.")
_HEX = set("0123456789abcdef")


def stage_key(stage: str, version: str, inputs: dict) -> str:
    """Cache key of a stage: sha256 over exactly what changes its output."""
    return hashlib.sha256(canonical_json({"stage": stage, "version": version, "inputs": inputs}).encode()).hexdigest()


def _check_name(kind: str, name: str) -> str:
    # keys and names become path components: never let one escape the store root
    if not isinstance(name, str) or not name or name.startswith(".") or not set(name.lower()) <= _SAFE:
        raise StoreError(f"invalid {kind} {name!r}: use letters, digits, '-', '_' and '.'")
    return name


def _check_file_name(name: str) -> str:
    for part in name.split("/") if isinstance(name, str) else [name]:
        _check_name("file name", part)
    return name


def _manifest_files(manifest: Any, stage: str, key: str, outputs: tuple[str, ...] | None) -> dict[str, str]:
    """{name: sha256} of a manifest read from the store, after checking its shape; StoreError if it is not a
    complete manifest of (stage, key): a shared bucket is untrusted input."""
    if not isinstance(manifest, dict) or manifest.get("stage") != stage or manifest.get("key") != key:
        raise StoreError("not the manifest of this stage and key")
    entries, result = manifest.get("files"), manifest.get("result")
    if not isinstance(entries, dict) or not isinstance(result, dict):
        raise StoreError("`files` and `result` must be objects")
    files = {}
    for name, entry in entries.items():
        digest = entry.get("sha256") if isinstance(entry, dict) else None
        if not (isinstance(digest, str) and len(digest) == 64 and set(digest) <= _HEX):
            raise StoreError(f"file {name!r} has no sha256")
        files[_check_file_name(name)] = digest
    missing = [p for p in outputs or () if not fnmatch.filter(files, p)]
    if missing:
        raise StoreError(f"no file for the declared outputs {missing}")
    return files


@dataclass(frozen=True)
class Blob:
    sha256: str


@dataclass(frozen=True)
class ArtifactRef:
    """Small JSON reference to a published artifact (what tasks return)."""

    stage: str
    key: str
    store: str
    files: dict[str, str] = field(default_factory=dict)  # name -> sha256
    result: dict[str, Any] = field(default_factory=dict)
    cached: bool = field(default=False, compare=False)  # found in the store rather than computed now

    def to_dict(self) -> dict:
        return {"stage": self.stage, "key": self.key, "store": self.store, "files": dict(self.files),
                "result": self.result, "cached": self.cached}

    @classmethod
    def from_dict(cls, data: dict) -> "ArtifactRef":
        return cls(data["stage"], data["key"], data["store"], dict(data.get("files", {})),
                   dict(data.get("result", {})), bool(data.get("cached", False)))

    @property
    def manifest_uri(self) -> str:
        return f"{self.store.rstrip('/')}/manifests/{self.stage}/{self.key}.json"


class ArtifactStore:
    def __init__(self, uri: str | os.PathLike, storage_options: dict | None = None):
        uri = str(uri)
        if "://" not in uri:
            uri = "file://" + str(Path(uri).expanduser().resolve())
        self.uri = uri.rstrip("/")
        options = dict(storage_options or {})
        self.options = dict(options)  # for other readers of this store (e.g. the slicing checkpoints)
        if self.uri.startswith("file://"):
            options.setdefault("auto_mkdir", True)  # local writes create their folders, like object stores
        try:
            self.fs, self.root = fsspec.core.url_to_fs(self.uri, **options)
        except (ValueError, ImportError) as exc:  # an unknown protocol, or its package missing
            raise StoreError(f"cannot open the store {self.uri}: {exc}") from None
        self.root = self.root.rstrip("/")
        self.local = self.uri.startswith("file://")

    def path(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def url(self, *parts: str) -> str:
        return "/".join([self.uri, *parts])

    # -- blobs ----------------------------------------------------------------------------------
    def _put_blob(self, data: bytes | None = None, local: str | os.PathLike | None = None) -> str:
        digest = hashlib.sha256(data).hexdigest() if data is not None else sha256_file(local)
        target = self.path("blobs", digest)
        if self.fs.exists(target) and self._blob_ok(digest):
            return digest  # content-addressed: an intact copy is already there
        tmp = self.path("tmp", uuid.uuid4().hex)
        if data is not None:
            self.fs.pipe_file(tmp, data)
        else:
            self.fs.put_file(str(local), tmp)
        self.fs.mv(tmp, target)
        return digest

    def _content_stamp(self, path: str) -> str | None:
        """What proves a stored file unchanged without reading it: a content hash the store computes (S3's ETag,
        computed by the server from the bytes) or, on a local disk, size, mtime, ctime and inode (ctime cannot be
        set back). None when the store offers neither: the file is then hashed on every lookup."""
        if self.local:
            return ":".join(map(str, stat_stamp(path)))
        info = self.fs.info(path)
        etag = info.get("ETag") or info.get("etag")
        return f"{info.get('size')}:{etag}" if etag else None

    def _memo(self, digest: str) -> tuple[Memo, str]:
        return Memo("verified-blobs"), f"{self.uri}\0{digest}"

    def _blob_ok(self, digest: str) -> bool:
        """The blob exists and hashes to its name. A full hash reads the whole object (a download, on S3), so
        a success is remembered locally against the object's content stamp: a rewritten object has a new stamp
        and is hashed again."""
        path = self.path("blobs", digest)
        try:
            stamp = self._content_stamp(path)
        except FileNotFoundError:
            return False
        memo, memo_key = self._memo(digest)
        if stamp is not None and memo.get(memo_key) == stamp:
            return True
        h = hashlib.sha256()
        try:
            with self.fs.open(path, "rb", block_size=_CHUNK) as f:
                while chunk := f.read(_CHUNK):
                    h.update(chunk)
        except FileNotFoundError:
            return False
        if h.hexdigest() != digest:
            return False
        if stamp is not None:
            memo.put(memo_key, stamp)
        return True

    def read_bytes(self, ref: ArtifactRef, name: str) -> bytes:
        """A file of an artifact, verified. A mismatch forgets that the blob was ever verified, so the next
        lookup of its artifact is a miss and the stage recomputes it (a corrupt blob is never sticky)."""
        digest = ref.files[name]
        data = self.fs.cat_file(self.path("blobs", digest))
        if hashlib.sha256(data).hexdigest() != digest:
            memo, memo_key = self._memo(digest)
            memo.put(memo_key, None)
            raise StoreError(f"{ref.stage}/{ref.key[:12]}:{name} does not match its sha256 (corrupted in the store "
                             f"since it was checked): run again to recompute it")
        return data

    def read_json(self, ref: ArtifactRef, name: str) -> Any:
        return json.loads(self.read_bytes(ref, name))

    def fetch(self, ref: ArtifactRef, folder: str | os.PathLike) -> Path:
        """Copy an artifact's files into a local folder (verified); reuses intact files already there."""
        folder = Path(folder)
        for name, digest in ref.files.items():
            target = folder / name
            if not target.resolve().is_relative_to(folder.resolve()):
                raise StoreError(f"{ref.stage}/{ref.key[:12]}: file name {name!r} escapes {folder}")
            if target.exists() and sha256_file(target) == digest:
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}")
            self.fs.get_file(self.path("blobs", digest), str(tmp))
            if sha256_file(tmp) != digest:
                tmp.unlink()
                raise StoreError(f"{ref.stage}/{ref.key[:12]}:{name} does not match its sha256")
            os.replace(tmp, target)
        return folder

    # -- manifests ------------------------------------------------------------------------------
    def lookup(self, stage: str, key: str, outputs: tuple[str, ...] | None = None) -> ArtifactRef | None:
        """The published artifact for (stage, key) if its manifest is well-formed, names every declared output
        and every blob verifies; else None (the stage recomputes), with a warning saying why."""
        path = self.path("manifests", _check_name("stage", stage), _check_name("key", key) + ".json")
        try:
            manifest = json.loads(self.fs.cat_file(path))
        except FileNotFoundError:
            return None
        except (json.JSONDecodeError, UnicodeDecodeError):
            log.warning("manifest %s is corrupt: recomputing %s", path, stage)
            return None
        try:
            files = _manifest_files(manifest, stage, key, outputs)
        except StoreError as exc:
            log.warning("manifest %s is malformed (%s): recomputing %s", path, exc, stage)
            return None
        for name, digest in files.items():
            if not self._blob_ok(digest):
                log.warning("%s/%s: file %s is missing or fails its sha256: recomputing", stage, key[:12], name)
                return None
        return ArtifactRef(stage, key, self.uri, files, manifest["result"], cached=True)

    def publish(self, stage: str, key: str, *, inputs: dict, result: dict,
                files: dict[str, bytes | str | os.PathLike] | None = None) -> ArtifactRef:
        """Write the files as blobs, then the manifest (last): the artifact exists from that moment on."""
        _check_name("stage", stage), _check_name("key", key)
        entries = {}
        for name, content in (files or {}).items():
            if isinstance(content, bytes):
                digest, size = self._put_blob(data=content), len(content)
            else:
                digest, size = self._put_blob(local=content), Path(content).stat().st_size
            entries[name] = {"sha256": digest, "size": size}
        manifest = {"stage": stage, "key": key, "inputs": inputs, "result": result, "files": entries,
                    "created": time.time(), "execution": uuid.uuid4().hex}
        tmp = self.path("tmp", uuid.uuid4().hex)
        self.fs.pipe_file(tmp, canonical_json(manifest).encode())
        self.fs.mv(tmp, self.path("manifests", stage, key + ".json"))
        return ArtifactRef(stage, key, self.uri, {n: e["sha256"] for n, e in entries.items()}, result)

    def manifests(self, stage: str | None = None) -> list[dict]:
        """Every readable manifest (of one stage); corrupt or foreign ones are skipped with a warning."""
        pattern = self.path("manifests", stage or "*", "*.json")
        out = []
        for path in sorted(self.fs.glob(pattern)):
            try:
                manifest = json.loads(self.fs.cat_file(path))
            except (json.JSONDecodeError, UnicodeDecodeError):
                manifest = None
            if isinstance(manifest, dict) and isinstance(manifest.get("key"), str):
                out.append(manifest)
            else:
                log.warning("skipping corrupt manifest %s", path)
        return out

    def checkpoint_uri(self, stage: str, key: str) -> str:
        return self.url("checkpoints", _check_name("stage", stage), _check_name("key", key))

    def drop_checkpoint(self, stage: str, key: str) -> None:
        path = self.path("checkpoints", stage, key)
        if self.fs.exists(path):
            self.fs.rm(path, recursive=True)

    # -- access ---------------------------------------------------------------------------------
    def check_access(self) -> None:
        """Write, read back and delete a small object, so a missing bucket, denied access or bad credentials
        are found before any compute. StoreError (naming the store and the credential source) for permanent
        problems; transient ones are raised as they are, to be retried."""
        probe = self.path("tmp", f"access-{uuid.uuid4().hex}")
        try:
            self.fs.pipe_file(probe, b"dynslice access check")
            ok = self.fs.cat_file(probe) == b"dynslice access check"
            self.fs.rm(probe)
        except Exception as exc:  # classified below: what s3fs, gcsfs, ... raise has no common base class
            if is_transient(exc):
                raise
            source = credential_source(self.uri, self.options)
            raise StoreError(f"cannot write to the store {self.uri} ({type(exc).__name__}: {exc}); credentials "
                             f"from {source}. Check that the bucket exists and that these credentials may write "
                             f"to it") from None
        if not ok:
            raise StoreError(f"the store {self.uri} returned other bytes than it was given: check the endpoint")

    # -- exports --------------------------------------------------------------------------------
    def export(self, run: str, files: dict[str, bytes | str | os.PathLike | Blob]) -> str:
        """Human-readable copies under runs/<run>/ (MANIFEST.json with every file's sha256 written last); returns
        the URL. Values: bytes, a local file, or a Blob of this store (verified, then copied inside the store).

        The new export is complete before the old one is replaced. Local store: it is built in a staging folder
        that then takes the old one's place at once. Object store: files are written one object at a time, so
        the old MANIFEST.json is removed before the first changed file is written and the new one written last
        (a killed publish leaves either the previous export intact, when nothing changed, or no manifest)."""
        _check_name("run name", run)
        for name in files:
            _check_file_name(name)
        for name, content in files.items():
            if isinstance(content, Blob) and not self._blob_ok(content.sha256):
                raise StoreError(f"blob {content.sha256[:12]} for {name} is missing or corrupt: run again to "
                                 f"recompute it")
        return self._export_local(run, files) if self.local else self._export_objects(run, files)

    def _write_export_file(self, target: str, content, verify: bool) -> str:
        """Write one export file atomically (temporary name, then move); returns its sha256."""
        tmp = f"{target}.{uuid.uuid4().hex}.tmp"
        if isinstance(content, Blob):
            self.fs.copy(self.path("blobs", content.sha256), tmp)
            digest = content.sha256
            if verify and self._file_sha256(tmp) != digest:
                self.fs.rm(tmp)
                raise StoreError(f"copying blob {digest[:12]} to {target} gave other bytes: run again")
        elif isinstance(content, bytes):
            self.fs.pipe_file(tmp, content)
            digest = hashlib.sha256(content).hexdigest()
        else:
            self.fs.put_file(str(content), tmp)
            digest = sha256_file(content)
        self.fs.mv(tmp, target)
        return digest

    def _file_sha256(self, path: str) -> str:
        h = hashlib.sha256()
        with self.fs.open(path, "rb", block_size=_CHUNK) as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
        return h.hexdigest()

    @staticmethod
    def _manifest_bytes(entries: dict[str, str]) -> bytes:
        return json.dumps({"files": entries, "created": time.time()}, indent=2, sort_keys=True).encode()

    def _export_local(self, run: str, files: dict) -> str:
        final = Path(self.path("runs", run))
        atomic.recover(final)
        staging = atomic.staging_for(final)
        try:
            entries = {name: self._write_export_file(str(staging / name), content, verify=True)
                       for name, content in files.items()}
            self.fs.pipe_file(str(staging / "MANIFEST.json"), self._manifest_bytes(entries))
            atomic.replace_folder(staging, final)
        finally:
            if staging.exists():
                self.fs.rm(str(staging), recursive=True)
        return self.url("runs", run)

    def _export_objects(self, run: str, files: dict) -> str:
        manifest = self.path("runs", run, "MANIFEST.json")
        try:
            current = json.loads(self.fs.cat_file(manifest)).get("files", {})
        except (FileNotFoundError, ValueError, AttributeError):
            current = {}
        entries, removed_manifest = {}, False
        for name, content in files.items():
            target = self.path("runs", run, name)
            digest = content.sha256 if isinstance(content, Blob) else None
            if digest is not None and current.get(name) == digest and self.fs.exists(target):
                entries[name] = digest  # the live export already holds these bytes
                continue
            if not removed_manifest and self.fs.exists(manifest):
                self.fs.rm(manifest)  # from here on the old export is being replaced: it must not look complete
                removed_manifest = True
            entries[name] = self._write_export_file(target, content, verify=False)
        self.fs.pipe_file(manifest, self._manifest_bytes(entries))
        for stale in self.fs.find(self.path("runs", run)):
            rel = stale[len(self.path("runs", run)) + 1:]
            if rel != "MANIFEST.json" and rel not in entries:
                self.fs.rm(stale)
        return self.url("runs", run)
