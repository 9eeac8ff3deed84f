"""The local cache folder (demo assets, copies of remote models) and the content hashes keyed into it."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

CACHE_ENV = "DYNSLICE_CACHE"
_CHUNK = 1 << 20


def cache_root() -> Path:
    """$DYNSLICE_CACHE, else ~/.cache/dynslice (not created here)."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "dynslice"


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_tree(files: dict[str, str]) -> str:
    """One hash over {relative name: file sha256}, independent of where the folder lives."""
    h = hashlib.sha256()
    for name in sorted(files):
        h.update(f"{name}\0{files[name]}\n".encode())
    return h.hexdigest()
