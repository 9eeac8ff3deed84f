"""Stage `score`: one dense layer-by-layer pass over the calibration windows, recording every layer's score in
every metric (the metric is chosen later, by the plan stage, at no extra cost).

Key: the model identity, its dtype, the calibration artifact and the batch size.
"""

from __future__ import annotations

from dynslice.config import ModelConfig
from dynslice.devices import resolve_device
from dynslice.identity import identify_model
from dynslice.models import resolve_model
from dynslice.pipeline import calibration as calibration_stage
from dynslice.pipeline.stage import Output, Stage, run_stage
from dynslice.plots import plot_scores
from dynslice.scores import METRICS, LayerScores
from dynslice.scoring import score_all_metrics
from dynslice.store import ArtifactRef, ArtifactStore

STAGE = Stage("score", code=(__name__,), outputs=tuple(f"scores-{m}.{ext}" for m in METRICS for ext in ("json", "png")))


def run(store: ArtifactStore, model: ModelConfig, calibration_ref: ArtifactRef, batch_size: int,
        device: str = "auto") -> ArtifactRef:
    identity = identify_model(model.source, model.revision)
    inputs = {"model": identity.key, "dtype": model.dtype, "calibration": calibration_ref.key,
              "batch_size": batch_size}

    def compute(key: str) -> Output:
        loaded = resolve_model(model.source, revision=model.revision, dtype=model.dtype)
        scores = score_all_metrics(loaded.model, calibration_stage.tensors(store, calibration_ref),
                                   batch_size=batch_size, device=resolve_device(device), model_id=identity.key,
                                   data_id=calibration_ref.result["data"]["key"])
        files = {}
        for metric, values in scores.items():
            files[f"scores-{metric}.json"] = values.to_json().encode()
            files[f"scores-{metric}.png"] = plot_scores(values)
        config = loaded.model.config
        result = {"model": identity.to_dict(), "architecture": type(loaded.model).__name__,
                  "num_layers": config.num_hidden_layers, "hidden_size": config.hidden_size,
                  "values": {m: list(s.values) for m, s in scores.items()}}
        return Output(result, files)

    return run_stage(store, STAGE, inputs, compute)


def scores(store: ArtifactStore, ref: ArtifactRef, metric: str) -> LayerScores:
    return LayerScores.from_json(store.read_bytes(ref, f"scores-{metric}.json").decode())
