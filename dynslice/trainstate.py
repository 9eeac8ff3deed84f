"""State of the recovery training loop on any fsspec URI, so a killed run resumes at its last checkpoint.

Layout under the state URI (the tensors first, `state.json` last, so a reader trusts only what it names):
    train-000050.safetensors    after step 50: `param.<name>` trainable weights, `adam.<name>.<key>` AdamW
                                state, `rng.<device>` generator states (uint8)
    state.json                  {"fingerprint", "step", "tensors", "sha256", "losses", "tokens"}
A checkpoint whose tensors fail their sha256 (or an unreadable state.json) is reported and training starts
over; one of another run (fingerprint) is refused.
No pickle: a state folder in a shared bucket must not be a way to run code on a teammate's machine. The
learning-rate schedule and the data order are pure functions of the step, so the step is their whole state.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

import torch

from dynslice.errors import StateError
from dynslice.statefolder import StateFolder

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainCheckpoint:
    step: int  # optimizer steps done
    params: dict[str, torch.Tensor]  # trainable parameter name -> value
    adam: dict[str, dict[str, torch.Tensor]]  # trainable parameter name -> AdamW state (step, exp_avg, ...)
    rng: dict[str, torch.Tensor]  # "cpu" / "cuda" -> generator state (uint8)
    losses: tuple[float, ...]  # mean token NLL of every step so far
    tokens: int  # predicted tokens trained on so far


class TrainState(StateFolder):
    def __init__(self, uri: str, fingerprint: str, storage_options: dict | None = None):
        super().__init__(uri, storage_options)
        self.fingerprint = fingerprint

    def load(self) -> TrainCheckpoint | None:
        """The saved checkpoint, None if there is none (or it is damaged: reported); StateError if it belongs to
        another run."""
        try:
            state = json.loads(self.fs.cat_file(self.path("state.json")))
        except FileNotFoundError:
            return None
        except (ValueError, UnicodeDecodeError) as exc:
            log.warning("recovery state %s is unreadable (%s): training starts over", self.path("state.json"), exc)
            return None
        if not isinstance(state, dict) or state.get("fingerprint") != self.fingerprint:
            raise StateError(f"recovery state folder {self.uri} belongs to another run (different model weights, "
                             "training data or settings); use an empty folder")
        try:
            tensors = self.read_tensors(state["tensors"], state["sha256"])
        except (StateError, KeyError, TypeError) as exc:
            log.warning("recovery checkpoint in %s is unusable (%s): training starts over", self.uri, exc)
            return None
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
        log.info("resuming recovery at step %d from %s", state["step"], self.uri)
        return TrainCheckpoint(state["step"], params, adam, rng, tuple(state["losses"]), state["tokens"])

    def save(self, ckpt: TrainCheckpoint) -> None:
        """Write the tensors, then point state.json at them (with their sha256), then drop older tensor files."""
        name = f"train-{ckpt.step:06d}.safetensors"
        tensors = {f"param.{k}": v for k, v in ckpt.params.items()}
        tensors.update({f"adam.{k}.{field}": v for k, fields in ckpt.adam.items() for field, v in fields.items()})
        tensors.update({f"rng.{k}": v for k, v in ckpt.rng.items()})
        digest = self.write_tensors(name, tensors)
        state = {"fingerprint": self.fingerprint, "step": ckpt.step, "tensors": name, "sha256": digest,
                 "losses": list(ckpt.losses), "tokens": ckpt.tokens}
        self.write("state.json", json.dumps(state).encode())
        self.remove_except("train-*.safetensors", {name})
