"""State of the layer loop on any fsspec URI, so a killed run resumes at the last finished layer.

Layout under the state URI (written in this order; `state.json` last, so a reader trusts only what it
names):
    embeddings.safetensors      rotated, sliced embedding tables (written once, after the first step)
    layer-0007.safetensors      layer 7's sliced weights and shortcuts
    carry-0007.safetensors      after layer 7: the basis Q_8 (float64) and the sliced inputs of layer 8
    state.json                  {"fingerprint", "next_layer", "carry"}
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

import fsspec
import torch
from safetensors.torch import load as load_bytes
from safetensors.torch import save as save_bytes

from dynslice.errors import StateError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Resume:
    next_layer: int
    basis: torch.Tensor  # Q_{next_layer}: [D, D] float64
    inputs: list[torch.Tensor]  # per batch: [B, T, d_{next_layer}]


class LoopState:
    def __init__(self, uri: str, fingerprint: str, storage_options: dict | None = None):
        self.fs, self.root = fsspec.core.url_to_fs(str(uri), **(storage_options or {}))
        self.fingerprint = fingerprint
        self.fs.makedirs(self.root, exist_ok=True)

    def _path(self, name: str) -> str:
        return f"{self.root.rstrip('/')}/{name}"

    def _write(self, name: str, data: bytes) -> None:
        tmp = self._path(f".{name}.tmp")
        self.fs.pipe_file(tmp, data)
        self.fs.mv(tmp, self._path(name))

    def _read_tensors(self, name: str) -> dict[str, torch.Tensor]:
        return load_bytes(self.fs.cat_file(self._path(name)))

    # -- reading --------------------------------------------------------------------------------
    def load(self) -> Resume | None:
        """The saved state, None if there is none; StateError if it belongs to another run."""
        if not self.fs.exists(self._path("state.json")):
            return None
        try:
            state = json.loads(self.fs.cat_file(self._path("state.json")))
        except json.JSONDecodeError as exc:
            raise StateError(f"{self._path('state.json')} is corrupt: {exc}") from exc
        if state.get("fingerprint") != self.fingerprint:
            raise StateError(f"state folder {self.root} belongs to another run (different model, calibration, "
                             "plan or batch size); use an empty folder")
        carry = self._read_tensors(state["carry"])
        inputs = [carry[f"x.{b}"] for b in range(len(carry) - 1)]
        log.info("resuming at layer %d from %s", state["next_layer"], self.root)
        return Resume(state["next_layer"], carry["q"], inputs)

    def embeddings(self) -> dict[str, torch.Tensor]:
        return self._read_tensors("embeddings.safetensors")

    def layer(self, index: int) -> dict[str, torch.Tensor]:
        return self._read_tensors(f"layer-{index:04d}.safetensors")

    # -- writing --------------------------------------------------------------------------------
    def save_embeddings(self, tensors: dict[str, torch.Tensor]) -> None:
        self._write("embeddings.safetensors", save_bytes(_cpu(tensors)))

    def save_layer(self, index: int, tensors: dict[str, torch.Tensor]) -> None:
        self._write(f"layer-{index:04d}.safetensors", save_bytes(_cpu(tensors)))

    def commit(self, next_layer: int, basis: torch.Tensor, inputs: list[torch.Tensor]) -> None:
        """Write the carry for `next_layer`, then point state.json at it, then drop older carries."""
        name = f"carry-{next_layer:04d}.safetensors"
        tensors = {"q": basis, **{f"x.{b}": x for b, x in enumerate(inputs)}}
        self._write(name, save_bytes(_cpu(tensors)))
        state = {"fingerprint": self.fingerprint, "next_layer": next_layer, "carry": name}
        self._write("state.json", json.dumps(state).encode())
        for path in self.fs.glob(self._path("carry-*.safetensors")):
            if not path.endswith(name):
                self.fs.rm(path)


def _cpu(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
