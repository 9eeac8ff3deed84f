"""Where things live: the local cache folder, URIs against local paths, and what tells that a file changed.

The cache folder holds demo assets, copies of remote models and small memos (a content hash remembered
against a file's version stamp), so that a file is hashed or downloaded in full only once.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from pathlib import Path
from typing import Any

from dynslice.hashing import sha256_bytes

log = logging.getLogger(__name__)

CACHE_ENV = "DYNSLICE_CACHE"


def cache_root() -> Path:
    """$DYNSLICE_CACHE, else ~/.cache/dynslice (not created here)."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "dynslice"


def is_uri(source: str | os.PathLike) -> bool:
    """A remote fsspec URI (s3://, gs://, memory://, ...); `file://` and plain paths are local."""
    text = str(source)
    return "://" in text and not text.startswith("file://")


def local_path(source: str | os.PathLike) -> Path:
    """A local path from a plain path or a `file://` URI, with `~` expanded."""
    return Path(str(source).removeprefix("file://")).expanduser()


def version_stamp(info: dict[str, Any]) -> str | None:
    """What changes whenever an object is rewritten, from an fsspec `info()`: its size with its ETag (object
    stores) or modification time (file systems). None when the file system reports neither."""
    version = info.get("ETag") or info.get("etag") or info.get("mtime") or info.get("LastModified")
    return None if version is None else f"{info.get('size')}:{version}"


def stat_stamp(path: str | os.PathLike) -> list[int]:
    """A local file's version stamp: size, mtime and ctime in ns, inode, device. ctime cannot be set back by a
    user, so a rewrite that restores the mtime still changes the stamp."""
    st = os.stat(path)
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev]


class Memo:
    """Small JSON values remembered in the cache folder under a key (e.g. a hash against a version stamp).

    A memo only saves work: a missing, unreadable or unwritable one means recomputing, never an error."""

    def __init__(self, kind: str, root: Path | None = None):
        self.folder = (root or cache_root()) / "memo" / kind

    def _path(self, key: str) -> Path:
        name = sha256_bytes(key.encode())
        return self.folder / name[:2] / f"{name}.json"

    def get(self, key: str) -> Any:
        try:
            return json.loads(self._path(key).read_text())
        except (OSError, ValueError):
            return None

    def put(self, key: str, value: Any) -> None:
        path = self._path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
            tmp.write_text(json.dumps(value, sort_keys=True))
            os.replace(tmp, path)
        except OSError as exc:  # a read-only cache only costs speed
            log.debug("cannot write memo %s: %s", path, exc)
