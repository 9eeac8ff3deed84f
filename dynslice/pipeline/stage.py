"""A pipeline stage declared once (its inputs, the code it depends on, its outputs), and the one function that
runs any of them: key, lookup, verify, compute, publish.

The key is the sha256 of the stage's name, its code identity (dynslice.pipeline.codeid) and its inputs: the
model and data identities and the stage's parameters, nothing else (no run id, no device unless a result
depends on it). A published artifact is a hit only if its manifest verifies (every declared output present,
every blob hashing to its name); anything less is recomputed.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dynslice.errors import DynsliceError
from dynslice.pipeline.codeid import closure, code_identity
from dynslice.pipeline.lease import Lease
from dynslice.store import ArtifactRef, ArtifactStore, stage_key

log = logging.getLogger(__name__)

Files = dict[str, "bytes | str | os.PathLike"]  # published name -> content, or a local file to upload


@dataclass(frozen=True)
class Stage:
    name: str
    code: tuple[str, ...]  # modules that compute the output; their dynslice imports are followed
    outputs: tuple[str, ...]  # published file names (fnmatch patterns; each must match at least one file)
    version: int = 1  # bump for a change outside dynslice's code that changes the output (a dependency's)
    exclusive: bool = False  # one run computes a key at a time (long stages with checkpoints); others wait

    def code_identity(self) -> str:
        return code_identity(self.code)

    def modules(self) -> tuple[str, ...]:
        return closure(self.code)

    def key(self, inputs: dict[str, Any]) -> str:
        return stage_key(self.name, f"{self.version}:{self.code_identity()}", inputs)

    def check_outputs(self, names) -> list[str]:
        """What is wrong with a set of published names: unmatched declared outputs, undeclared files."""
        names = list(names)
        problems = [f"no file matches {p!r}" for p in self.outputs if not fnmatch.filter(names, p)]
        problems += [f"{n!r} is not a declared output" for n in names
                     if not any(fnmatch.fnmatchcase(n, p) for p in self.outputs)]
        return problems


@dataclass
class Output:
    """What a stage's compute returns: its small JSON result, its files, and a scratch folder holding local
    files to publish (removed once they are in the store, published or not)."""

    result: dict[str, Any]
    files: Files = field(default_factory=dict)
    scratch: Path | None = None


def run_stage(store: ArtifactStore, stage: Stage, inputs: dict[str, Any],
              compute: Callable[[str], Output]) -> ArtifactRef:
    """The published artifact of (stage, inputs): from the store when a verified one exists, else computed
    (compute gets the key, e.g. to name its checkpoints) and published. The result gains `wall_s`."""
    key = stage.key(inputs)
    ref = store.lookup(stage.name, key, stage.outputs)
    if ref is not None:
        log.info("%s: cache hit %s", stage.name, key[:12])
        return ref
    if not stage.exclusive:
        return _compute_and_publish(store, stage, key, inputs, compute)
    lease = Lease(store, stage.name, key)
    while not lease.acquire():
        holder = lease.holder() or {}
        log.info("%s: %s is being computed by %s: waiting for it", stage.name, key[:12], holder.get("owner", "?"))
        time.sleep(min(10.0, lease.ttl / 4))
        ref = store.lookup(stage.name, key, stage.outputs)
        if ref is not None:
            log.info("%s: %s published by the other run: cache hit", stage.name, key[:12])
            return ref
    try:
        ref = store.lookup(stage.name, key, stage.outputs)  # published while this run waited for the lease
        return ref if ref is not None else _compute_and_publish(store, stage, key, inputs, compute)
    finally:
        lease.release()


def _compute_and_publish(store: ArtifactStore, stage: Stage, key: str, inputs: dict[str, Any],
                         compute: Callable[[str], Output]) -> ArtifactRef:
    log.info("%s: computing %s", stage.name, key[:12])
    start = time.perf_counter()
    out = compute(key)
    try:
        problems = stage.check_outputs(out.files)
        if problems:  # a programming error: a stage must publish exactly what it declares
            raise DynsliceError(f"stage {stage.name} produced the wrong files: {'; '.join(problems)}")
        result = dict(out.result, wall_s=round(time.perf_counter() - start, 2))
        return store.publish(stage.name, key, inputs=inputs, result=result, files=out.files)
    finally:
        if out.scratch is not None:
            shutil.rmtree(out.scratch, ignore_errors=True)
