"""A folder (any fsspec URI) holding a resumable loop's checkpoints: files written under unique temporary names
and moved into place, tensors stored as safetensors with their sha256 recorded, and read back only when they
hash to what was recorded. Both the slicing loop (loopstate.py) and the recovery loop (trainstate.py) keep
their state in one; a checkpoint that fails its hash is reported and never resumed from.
"""

from __future__ import annotations

import uuid

import fsspec
import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_bytes
from safetensors.torch import save as save_bytes

from dynslice.errors import StateError
from dynslice.hashing import sha256_bytes


class StateFolder:
    def __init__(self, uri: str, storage_options: dict | None = None):
        self.fs, self.root = fsspec.core.url_to_fs(str(uri), **(storage_options or {}))
        self.root = self.root.rstrip("/")
        self.uri = str(uri)
        self.fs.makedirs(self.root, exist_ok=True)

    def path(self, name: str) -> str:
        return f"{self.root}/{name}"

    def write(self, name: str, data: bytes) -> str:
        """Write `name` atomically (a unique temporary name, then a move: two writers never collide); its sha256."""
        tmp = self.path(f".{name}.{uuid.uuid4().hex}.tmp")
        self.fs.pipe_file(tmp, data)
        self.fs.mv(tmp, self.path(name))
        return sha256_bytes(data)

    def write_tensors(self, name: str, tensors: dict[str, torch.Tensor]) -> str:
        return self.write(name, save_bytes({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}))

    def read_tensors(self, name: str, digest: str) -> dict[str, torch.Tensor]:
        """The tensors of `name` if its bytes hash to `digest`; StateError (naming the file) otherwise."""
        try:
            data = self.fs.cat_file(self.path(name))
        except FileNotFoundError:
            raise StateError(f"{self.path(name)} is missing") from None
        if sha256_bytes(data) != digest:
            raise StateError(f"{self.path(name)} does not match its recorded sha256 (corrupt or torn)")
        try:
            return load_bytes(data)
        except SafetensorError as exc:
            raise StateError(f"{self.path(name)} is not a readable safetensors file: {exc}") from None

    def remove_except(self, pattern: str, keep: set[str]) -> None:
        """Delete the files matching `pattern` whose names are not in `keep`."""
        for path in self.fs.glob(self.path(pattern)):
            if path.rpartition("/")[2] not in keep:
                self.fs.rm(path)
