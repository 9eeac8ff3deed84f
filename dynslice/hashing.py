"""Content hashes: of files, bytes, folders (by their files' hashes) and JSON values (canonical form)."""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

_CHUNK = 1 << 22


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


def canonical_json(data: Any) -> str:
    """The one JSON text of a value (sorted keys, no spaces): what keys and hashes are computed over."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)


def sha256_json(data: Any) -> str:
    return sha256_bytes(canonical_json(data).encode())
