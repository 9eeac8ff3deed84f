"""Model identity: the value cache keys use for a model, found without loading (or re-reading) its weights.

- hub id: the id and the commit its revision resolves to;
- local file or folder (and the demo asset): a sha256 over the weight files and config.json, so the same
  bytes have one identity wherever they live. It is computed in full once; later runs reuse it while every
  file's version stamp (size, mtime, ctime, inode) is unchanged, so a fully cached run reads no weights;
- fsspec URI: the same content hash, remembered against the remote listing (names, sizes, ETags): the
  first run downloads and hashes the copy, later runs only list the folder.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from dynslice.errors import SourceError
from dynslice.hashing import canonical_json, sha256_file, sha256_tree
from dynslice.locations import Memo, local_path, stat_stamp
from dynslice.sources import WEIGHT_SUFFIXES, classify_source, demo_folder, fetch_uri, hub_revision, remote_listing

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelIdentity:
    kind: str  # hub | folder | sliced | gguf | uri | demo
    source: str  # what the user named (shown to people, not part of the key)
    revision: str | None = None  # hub: the resolved commit
    sha256: str | None = None  # local bytes: one hash over the weight files and config.json

    @property
    def key(self) -> str:
        """What cache keys use: the same weights give the same key, whatever path they were loaded from."""
        return f"hub:{self.source}@{self.revision}" if self.sha256 is None else f"sha256:{self.sha256}"

    def to_dict(self) -> dict[str, Any]:
        return dict(asdict(self), key=self.key)


def _file_sha256(path: Path, memo: Memo) -> str:
    """A file's sha256, hashed in full only when its version stamp is new."""
    key = str(path.resolve())
    stamp = stat_stamp(path)
    seen = memo.get(key)
    if isinstance(seen, dict) and seen.get("stamp") == stamp and isinstance(seen.get("sha256"), str):
        return seen["sha256"]
    log.info("hashing %s (once: remembered while the file is unchanged)", path)
    digest = sha256_file(path)
    memo.put(key, {"stamp": stamp, "sha256": digest})
    return digest


def model_files(folder: Path) -> list[Path]:
    """The files whose bytes decide a model folder: weights and config.json (tokenizer files do not count)."""
    return [p for p in sorted(folder.rglob("*"))
            if p.is_file() and (p.suffix in WEIGHT_SUFFIXES or p.name == "config.json")]


def local_digest(path: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> str:
    """sha256 of a local .gguf file, or of a folder's weight files and config.json (relative names + hashes)."""
    path = Path(path)
    memo = Memo("file-sha256", Path(cache_dir) if cache_dir else None)
    if path.is_file():
        return _file_sha256(path, memo)
    files = model_files(path)
    if not any(p.suffix in WEIGHT_SUFFIXES for p in files):
        raise SourceError(f"{path} holds no weight file ({', '.join(WEIGHT_SUFFIXES)})")
    return sha256_tree({p.relative_to(path).as_posix(): _file_sha256(p, memo) for p in files})


def _uri_digest(uri: str, cache_dir: str | os.PathLike | None) -> str:
    listing = remote_listing(uri)
    memo = Memo("uri-sha256", Path(cache_dir) if cache_dir else None)
    key = canonical_json({"uri": uri, "files": listing[2]})
    seen = memo.get(key)
    if isinstance(seen, str):
        return seen
    digest = local_digest(fetch_uri(uri, cache_dir, listing=listing), cache_dir)
    memo.put(key, digest)
    return digest


def identify_model(source: str | os.PathLike, revision: str | None = None,
                   cache_dir: str | os.PathLike | None = None) -> ModelIdentity:
    """The identity of a model source without loading it (see the module docstring for what is read)."""
    source = str(source)
    kind = classify_source(source)
    if kind == "hub":
        return ModelIdentity("hub", source, revision=hub_revision(source, revision))
    if kind == "uri":
        return ModelIdentity("uri", source, sha256=_uri_digest(source, cache_dir))
    path = demo_folder(source, cache_dir) if kind == "demo" else local_path(source)
    return ModelIdentity(kind, source, sha256=local_digest(path, cache_dir))
