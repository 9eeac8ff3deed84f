"""Stage `slice`: the layer loop, checkpointed in the store so a killed run resumes at its last layer.

Key: the model identity, its dtype, the calibration artifact, the widths, whether a tied head is untied and the
batch size (the plan's provenance does not change the sliced model: two planners that agree on the widths share
one slice).
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

from dynslice.compress import slice_model
from dynslice.config import ModelConfig
from dynslice.counts import unique_parameters
from dynslice.devices import resolve_device
from dynslice.errors import StateError
from dynslice.identity import identify_model
from dynslice.locations import cache_root
from dynslice.loopstate import LoopState
from dynslice.models import resolve_model
from dynslice.pipeline import calibration as calibration_stage
from dynslice.pipeline.plan import plan_of
from dynslice.pipeline.stage import Output, Stage, run_stage
from dynslice.plots import plot_spectra
from dynslice.sliced.format import save_sliced
from dynslice.store import ArtifactRef, ArtifactStore

log = logging.getLogger(__name__)

STAGE = Stage("slice", code=(__name__,), outputs=("model/*", "spectra.json", "spectra.png"), exclusive=True)


def run(store: ArtifactStore, model: ModelConfig, calibration_ref: ArtifactRef, plan_ref: ArtifactRef,
        batch_size: int, device: str = "auto", checkpoint_every: int = 1) -> ArtifactRef:
    identity = identify_model(model.source, model.revision)
    plan = plan_of(store, plan_ref)
    inputs = {"model": identity.key, "dtype": model.dtype, "calibration": calibration_ref.key,
              "widths": list(plan.widths), "mid": list(plan.mid), "untie_head": plan.untie_head,
              "batch_size": batch_size}
    if plan.removes:  # removal: no rotation, so neither the calibration data nor the batching matter
        inputs = {"model": identity.key, "dtype": model.dtype, "removed": list(plan.removed)}
        if plan.removed_attention or plan.removed_mlp:  # (whole-layer removals keep the inputs they had)
            inputs |= {"removed_attention": list(plan.removed_attention), "removed_mlp": list(plan.removed_mlp)}
        return run_stage(store, STAGE, inputs, lambda key: _remove(model, plan))

    def compute(key: str) -> Output:
        state_uri = store.checkpoint_uri(STAGE.name, key)
        resumed_from = LoopState.progress(state_uri, store.options)
        loaded = resolve_model(model.source, revision=model.revision, dtype=model.dtype)
        dense = unique_parameters(loaded.model)
        spectra: dict = {}
        options = dict(batch_size=batch_size, device=resolve_device(device), state_dir=state_uri,
                       checkpoint_every=checkpoint_every, spectra=spectra, storage_options=store.options)
        calib = calibration_stage.tensors(store, calibration_ref)
        try:
            sliced = slice_model(loaded.model, calib, plan, **options)
        except StateError as exc:  # refused before touching the model: a checkpoint this run cannot use
            log.warning("slice %s: %s; discarding the checkpoint", key[:12], exc)
            store.drop_checkpoint(STAGE.name, key)
            resumed_from = 0
            sliced = slice_model(loaded.model, calib, plan, **options)
        kept = {"embedding": plan.widths[0], **{f"layer.{i}.mid": plan.mid[i] for i in range(plan.num_layers)},
                **{f"layer.{i}.out": plan.widths[i + 1] for i in range(plan.num_layers)}}
        spectra_json = {name: [float(v) for v in values] for name, values in spectra.items()}
        params = unique_parameters(sliced)
        folder = Path(tempfile.mkdtemp(prefix="dynslice-slice-"))
        save_sliced(sliced, folder, tokenizer=loaded.tokenizer)
        files = {f"model/{p.name}": str(p) for p in sorted(folder.iterdir()) if p.is_file()}
        files["spectra.json"] = json.dumps(spectra_json).encode()
        files["spectra.png"] = plot_spectra(spectra_json, kept)
        result = {"parameters": params, "dense_parameters": dense, "param_reduction": 1 - params / dense,
                  "widths": list(plan.widths), "resumed_from_layer": resumed_from,
                  "layers_computed": plan.num_layers - resumed_from}
        return Output(result, files, scratch=folder)

    ref = run_stage(store, STAGE, inputs, compute)
    if not ref.cached:
        store.drop_checkpoint(STAGE.name, ref.key)
    return ref


def _remove(model: ModelConfig, plan) -> Output:
    """The dense model without the plan's layers and sublayers: a standard transformers folder (same class, fewer
    layers) when whole layers go, the dynslice format when sublayers go too."""
    from dynslice.removal import prune
    from dynslice.sliced.format import save_model

    loaded = resolve_model(model.source, revision=model.revision, dtype=model.dtype)
    dense = unique_parameters(loaded.model)
    reduced = prune(loaded.model, plan)
    params = unique_parameters(reduced)
    folder = Path(tempfile.mkdtemp(prefix="dynslice-slice-"))
    save_model(reduced, folder, loaded.tokenizer)
    files = {f"model/{p.name}": str(p) for p in sorted(folder.iterdir()) if p.is_file()}
    files |= {"spectra.json": b"{}", "spectra.png": plot_spectra({}, {})}  # nothing rotated, nothing sliced
    result = {"parameters": params, "dense_parameters": dense, "param_reduction": 1 - params / dense,
              "widths": list(plan.widths), "removed": list(plan.removed),
              "removed_attention": list(plan.removed_attention), "removed_mlp": list(plan.removed_mlp),
              "resumed_from_layer": 0,
              "layers_computed": 0}
    return Output(result, files, scratch=folder)


def model_dir(store: ArtifactStore, ref: ArtifactRef) -> Path:
    """A verified local copy of the sliced model folder (kept in the cache by artifact key)."""
    model_files = {n: d for n, d in ref.files.items() if n.startswith("model/")}
    folder = cache_root() / "artifacts" / ref.key
    store.fetch(ArtifactRef(ref.stage, ref.key, ref.store, model_files), folder)
    return folder / "model"
