"""Stage `recover` (optional): a short LoRA fine-tune of the sliced model, merged back so the model keeps its
format; checkpointed in the store so a killed run resumes.

Key: the slice artifact, the dtype, the training data (tokenizer, data identity, sampling) and the settings
that change the trained weights (`RecoverConfig.key_params`).
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

from dynslice.config import ModelConfig, RecoverConfig
from dynslice.data import data_key, resolve_data, tokenizer_fingerprint
from dynslice.devices import resolve_device
from dynslice.errors import StateError
from dynslice.models import resolve_model, tokenizer_of
from dynslice.pipeline import slice as slice_stage
from dynslice.pipeline.stage import Output, Stage, run_stage
from dynslice.recover import recover, training_windows
from dynslice.sliced.format import save_model
from dynslice.store import ArtifactRef, ArtifactStore

log = logging.getLogger(__name__)

STAGE = Stage("recover", code=(__name__,), outputs=("model/*", "recovery.json"), exclusive=True)


def run(store: ArtifactStore, model: ModelConfig, slice_ref: ArtifactRef, settings: RecoverConfig,
        device: str = "auto") -> ArtifactRef:
    tokenizer = tokenizer_of(model.source, model.revision)  # slicing keeps the tokenizer: no weights read here
    source = resolve_data(settings.source, settings.split)
    inputs = {"slice": slice_ref.key, "dtype": model.dtype, "tokenizer": tokenizer_fingerprint(tokenizer),
              "data": data_key(source), "settings": settings.key_params()}

    def compute(key: str) -> Output:
        loaded = resolve_model(slice_stage.model_dir(store, slice_ref), dtype=model.dtype)
        windows = training_windows(settings, tokenizer)
        run = dict(state_dir=store.checkpoint_uri(STAGE.name, key), storage_options=store.options,
                   device=resolve_device(device))
        try:
            stats = recover(loaded.model, windows, settings, **run)
        except StateError as exc:  # refused before training: a checkpoint folder of another run
            log.warning("recover %s: %s; discarding the checkpoint", key[:12], exc)
            store.drop_checkpoint(STAGE.name, key)
            stats = recover(loaded.model, windows, settings, **run)
        out = Path(tempfile.mkdtemp(prefix="dynslice-recover-"))
        save_model(loaded.model, out / "model", tokenizer=loaded.tokenizer)  # a layer-removed model stays plain
        files = {f"model/{p.name}": str(p) for p in sorted((out / "model").iterdir()) if p.is_file()}
        summary = {k: v for k, v in stats.to_dict().items() if k != "losses"}
        files["recovery.json"] = json.dumps(stats.to_dict(), indent=2).encode()
        parameters = slice_ref.result.get("parameters")
        return Output({**summary, "parameters": parameters, "dense_parameters": slice_ref.result.get(
            "dense_parameters"), "param_reduction": slice_ref.result.get("param_reduction"),
            "widths": slice_ref.result.get("widths")}, files, scratch=out)

    ref = run_stage(store, STAGE, inputs, compute)
    if not ref.cached:
        store.drop_checkpoint(STAGE.name, ref.key)
    return ref
