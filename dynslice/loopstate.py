"""State of the layer loop on any fsspec URI, so a killed run resumes at the last finished layer.

Layout under the state URI:
    embeddings.safetensors      rotated, sliced embedding tables (written once, after the embedding step)
    layer-0007.safetensors      layer 7's sliced weights and shortcuts
    carry-0008.safetensors      before layer 8: the basis Q_8 (float64), the sliced inputs of layer 8 per
                                calibration batch, and the PCA spectra recorded so far
    state.json                  written last: the fingerprint of the run, the two newest checkpoints and the
                                sha256 of every file they rely on

A reader trusts a file only if it hashes to what state.json says: a flipped bit or a truncated file makes that
checkpoint unusable (reported), the older one is tried, and with none left the loop starts again from the
first layer. Every write goes to a unique temporary name first, so two runs writing the same folder never
trip over each other's files (their bytes are identical: the loop is deterministic).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

import fsspec
import torch

from dynslice.errors import StateError
from dynslice.statefolder import StateFolder

log = logging.getLogger(__name__)

STATE_FORMAT = 2
_KEEP = 2  # checkpoints kept: the newest may be torn by a kill, the one before it is then used


@dataclass(frozen=True)
class Resume:
    """A verified checkpoint: everything the loop needs to go on at `next_layer`."""

    next_layer: int
    basis: torch.Tensor  # Q_{next_layer}: [D, D] float64
    inputs: list[torch.Tensor]  # per batch: [B, T, d_{next_layer}]
    spectra: dict[str, torch.Tensor]  # name -> eigenvalues [D] (see slice_model's `spectra`)
    embeddings: dict[str, torch.Tensor]  # module path -> sliced table
    layers: list[dict[str, torch.Tensor]]  # state dict of each finished layer, in order


class LoopState(StateFolder):
    def __init__(self, uri: str, fingerprint: str, storage_options: dict | None = None):
        super().__init__(uri, storage_options)
        self.fingerprint = fingerprint
        self._files: dict[str, str] = {}  # name -> sha256 of what this run wrote or verified
        self._checkpoints: list[dict] = []

    def _put_tensors(self, name: str, tensors: dict[str, torch.Tensor]) -> None:
        self._files[name] = self.write_tensors(name, tensors)

    def _verified(self, name: str, digest: str) -> dict[str, torch.Tensor]:
        tensors = self.read_tensors(name, digest)
        self._files[name] = digest
        return tensors

    # -- reading --------------------------------------------------------------------------------
    @staticmethod
    def progress(uri: str, storage_options: dict | None = None) -> int:
        """The layer a state folder would resume at according to its state.json (0 if none); not verified."""
        fs, root = fsspec.core.url_to_fs(str(uri), **(storage_options or {}))
        try:
            state = json.loads(fs.cat_file(f"{root.rstrip('/')}/state.json"))
            return max(int(c["next_layer"]) for c in state["checkpoints"])
        except (FileNotFoundError, KeyError, TypeError, ValueError):
            return 0

    def _state(self) -> dict | None:
        try:
            raw = self.fs.cat_file(self.path("state.json"))
        except FileNotFoundError:
            return None
        try:
            state = json.loads(raw)
            checkpoints = state["checkpoints"]
            if state.get("format") != STATE_FORMAT or not isinstance(checkpoints, list):
                raise ValueError("unknown format")
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
            log.warning("%s is unreadable (%s): starting the loop from the first layer", self.path("state.json"),
                        exc)
            return None
        if state.get("fingerprint") != self.fingerprint:
            raise StateError(f"state folder {self.uri} belongs to another run (different model, calibration, "
                             "plan or batch size); use an empty folder")
        return state

    def load(self) -> Resume | None:
        """The newest checkpoint whose files all verify, None if there is none; StateError if the folder
        belongs to another run."""
        state = self._state()
        if state is None:
            return None
        files = state.get("files", {})
        for checkpoint in sorted(state["checkpoints"], key=lambda c: -int(c["next_layer"])):
            try:
                resume = self._resume(checkpoint, files)
            except (StateError, KeyError, TypeError, ValueError) as exc:
                log.warning("checkpoint at layer %s of %s is unusable: %s", checkpoint.get("next_layer"), self.uri,
                            exc)
                continue
            self._checkpoints = [c for c in state["checkpoints"] if int(c["next_layer"]) <= resume.next_layer]
            log.info("resuming at layer %d from %s", resume.next_layer, self.uri)
            return resume
        log.warning("no usable checkpoint in %s: slicing again from the first layer", self.uri)
        self._files, self._checkpoints = {}, []
        return None

    def _resume(self, checkpoint: dict, files: dict[str, str]) -> Resume:
        next_layer = int(checkpoint["next_layer"])
        carry = self._verified(checkpoint["carry"], files[checkpoint["carry"]])
        embeddings = self._verified("embeddings.safetensors", files["embeddings.safetensors"])
        layers = [self._verified(_layer_name(i), files[_layer_name(i)]) for i in range(next_layer)]
        inputs = [carry.pop(f"inputs.{b}") for b in range(sum(k.startswith("inputs.") for k in carry))]
        spectra = {k.removeprefix("spectrum."): v for k, v in carry.items() if k.startswith("spectrum.")}
        return Resume(next_layer, carry["basis"], inputs, spectra, embeddings, layers)

    # -- writing --------------------------------------------------------------------------------
    def save_embeddings(self, tensors: dict[str, torch.Tensor]) -> None:
        self._put_tensors("embeddings.safetensors", tensors)

    def save_layer(self, index: int, tensors: dict[str, torch.Tensor]) -> None:
        self._put_tensors(_layer_name(index), tensors)

    def commit(self, next_layer: int, basis: torch.Tensor, inputs: list[torch.Tensor],
               spectra: dict[str, torch.Tensor]) -> None:
        """Write the carry for `next_layer`, then state.json naming it (and every file it needs, with hashes),
        then drop carries no checkpoint names any more."""
        name = f"carry-{next_layer:04d}.safetensors"
        self._put_tensors(name, {"basis": basis, **{f"inputs.{b}": x for b, x in enumerate(inputs)},
                                 **{f"spectrum.{k}": v for k, v in spectra.items()}})
        self._checkpoints = ([c for c in self._checkpoints if c["next_layer"] < next_layer]
                             + [{"next_layer": next_layer, "carry": name}])[-_KEEP:]
        kept = {c["carry"] for c in self._checkpoints}
        files = {n: d for n, d in self._files.items() if not n.startswith("carry-") or n in kept}
        state = {"format": STATE_FORMAT, "fingerprint": self.fingerprint, "checkpoints": self._checkpoints,
                 "files": files}
        self.write("state.json", json.dumps(state, indent=1, sort_keys=True).encode())
        self.remove_except("carry-*.safetensors", kept)


def _layer_name(index: int) -> str:
    return f"layer-{index:04d}.safetensors"
