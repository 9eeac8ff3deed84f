"""State of the recovery training loop on any fsspec URI, so a killed run resumes at its last checkpoint.

Layout under the state URI (the tensors first, `state.json` last, so a reader trusts only what it names):
    train-000050.safetensors    after step 50: `param.<name>` trainable weights, `adam.<name>.<key>` AdamW
                                state, `rng.<device>` generator states (uint8)
    state.json                  {"fingerprint", "step", "tensors", "losses", "tokens"}
No pickle: a state folder in a shared bucket must not be a way to run code on a teammate's machine. The
learning-rate schedule and the data order are pure functions of the step, so the step is their whole state.
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
class TrainCheckpoint:
    step: int  # optimizer steps done
    params: dict[str, torch.Tensor]  # trainable parameter name -> value
    adam: dict[str, dict[str, torch.Tensor]]  # trainable parameter name -> AdamW state (step, exp_avg, ...)
    rng: dict[str, torch.Tensor]  # "cpu" / "cuda" -> generator state (uint8)
    losses: tuple[float, ...]  # mean token NLL of every step so far
    tokens: int  # predicted tokens trained on so far


class TrainState:
    def __init__(self, uri: str, fingerprint: str, storage_options: dict | None = None):
        self.fs, self.root = fsspec.core.url_to_fs(str(uri), **(storage_options or {}))
        self.fingerprint = fingerprint
        self.fs.makedirs(self.root, exist_ok=True)

    def _path(self, name: str) -> str:
        return f"{self.root.rstrip('/')}/{name}"

    def _write(self, name: str, data: bytes) -> None:
        # write aside, then rename: a kill mid-write leaves the previous file intact
        tmp = self._path(f".{name}.tmp")
        self.fs.pipe_file(tmp, data)
        self.fs.mv(tmp, self._path(name))

    def load(self) -> TrainCheckpoint | None:
        """The saved checkpoint, None if there is none; StateError if it belongs to another run."""
        if not self.fs.exists(self._path("state.json")):
            return None
        try:
            state = json.loads(self.fs.cat_file(self._path("state.json")))
            tensors = load_bytes(self.fs.cat_file(self._path(state["tensors"])))
        except (json.JSONDecodeError, KeyError, FileNotFoundError, OSError) as exc:
            raise StateError(f"recovery state in {self.root} is unreadable ({exc}); use an empty folder") from exc
        if state.get("fingerprint") != self.fingerprint:
            raise StateError(f"recovery state folder {self.root} belongs to another run (different model weights, "
                             "training data or settings); use an empty folder")
        params: dict[str, torch.Tensor] = {}
        adam: dict[str, dict[str, torch.Tensor]] = {}
        rng: dict[str, torch.Tensor] = {}
        for key, value in tensors.items():
            kind, _, rest = key.partition(".")
            if kind == "param":
                params[rest] = value
            elif kind == "adam":
                name, _, field = rest.rpartition(".")
                adam.setdefault(name, {})[field] = value
            elif kind == "rng":
                rng[rest] = value
        log.info("resuming recovery at step %d from %s", state["step"], self.root)
        return TrainCheckpoint(state["step"], params, adam, rng, tuple(state["losses"]), state["tokens"])

    def save(self, ckpt: TrainCheckpoint) -> None:
        """Write the tensors, then point state.json at them, then drop older tensor files."""
        name = f"train-{ckpt.step:06d}.safetensors"
        tensors = {f"param.{k}": v for k, v in ckpt.params.items()}
        tensors.update({f"adam.{k}.{field}": v for k, fields in ckpt.adam.items() for field, v in fields.items()})
        tensors.update({f"rng.{k}": v for k, v in ckpt.rng.items()})
        self._write(name, save_bytes({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}))
        state = {"fingerprint": self.fingerprint, "step": ckpt.step, "tensors": name, "losses": list(ckpt.losses),
                 "tokens": ckpt.tokens}
        self._write("state.json", json.dumps(state).encode())
        for path in self.fs.glob(self._path("train-*.safetensors")):
            if not path.endswith(name):
                self.fs.rm(path)
