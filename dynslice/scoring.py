"""Measuring layer scores: how much each decoder layer changes the residual stream it reads.

Per layer i, over every valid (non-pad) calibration token t:
    cosine:  BI_i = mean_t (1 - cos(h_i[t], h_{i+1}[t]))          (ShortGPT's Block Influence)
    angular: BI_i = mean_t arccos(cos(h_i[t], h_{i+1}[t])) / pi
h_i is the residual stream entering layer i and h_{i+1} the stream it writes; for the last layer that is
the stream BEFORE the final norm. (The paper's code took the last output after the final norm, which
compares a normalised vector with an unnormalised one and biases the last layer's score.) High BI = the
layer changes its input a lot = important; the planners turn BI into redundancy r = 1 - minmax(BI).

One dense layer-by-layer pass: layers visit the device one at a time (like the slicing engine) and the
statistics stream into float64 sums per layer, so nothing per token is kept; the hidden states of the
calibration set (one copy, [N, T, D]) live on `signal_device` between layers.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math

import torch
from torch import nn
from tqdm.auto import tqdm

from dynslice.architectures import spec_for
from dynslice.calibration import as_calibration, check_batch_size
from dynslice.capture import capture_layer_inputs, move_to, zero_pads
from dynslice.errors import ScoreError
from dynslice.scores import METRICS, LayerScores

log = logging.getLogger(__name__)


def token_scores(x: torch.Tensor, y: torch.Tensor, metric: str) -> torch.Tensor:
    """Per-token score of a layer that maps x to y ([..., D] each) -> [...], in float64."""
    # float64: 1 - cos of a redundant layer is ~1e-3, below what a bf16/fp32 dot product over D resolves
    x, y = x.double(), y.double()
    cos = (x * y).sum(-1) / (x.norm(dim=-1) * y.norm(dim=-1)).clamp_min(torch.finfo(torch.float64).tiny)
    cos = cos.clamp(-1.0, 1.0)
    return 1.0 - cos if metric == "cosine" else torch.arccos(cos) / math.pi


def _model_identity(model: nn.Module, model_id: str | None) -> dict:
    config_json = model.config.to_json_string(use_diff=False)
    return {"id": model_id or getattr(model, "name_or_path", "") or model.config._name_or_path or None,
            "class": type(model).__name__,
            "config_sha256": hashlib.sha256(config_json.encode()).hexdigest()}


def score_layers(model: nn.Module, calibration, *, metric: str = "cosine", batch_size: int = 8,
                 device: str | torch.device | None = None, signal_device: str | torch.device | None = None,
                 model_id: str | None = None, data_id: str | None = None, progress: bool = True) -> LayerScores:
    """Block Influence of every decoder layer of `model` over the valid tokens of `calibration`.

    calibration: LongTensor [N, T] of token ids, or a dict with `input_ids` and `attention_mask`.
    device: where each layer is computed (default: where the model is); the model may stay on the CPU.
    signal_device: where the calibration hidden states are kept between layers (default: `device`).
    model_id, data_id: identities recorded in the provenance (the data's token fingerprint is always kept).
    The model is not changed.
    """
    if metric not in METRICS:
        raise ScoreError(f"unknown metric {metric!r}; expected one of {', '.join(METRICS)}")
    return score_all_metrics(model, calibration, metrics=(metric,), batch_size=batch_size, device=device,
                             signal_device=signal_device, model_id=model_id, data_id=data_id,
                             progress=progress)[metric]


def score_all_metrics(model: nn.Module, calibration, *, metrics: tuple[str, ...] = METRICS, batch_size: int = 8,
                      device: str | torch.device | None = None, signal_device: str | torch.device | None = None,
                      model_id: str | None = None, data_id: str | None = None,
                      progress: bool = True) -> dict[str, LayerScores]:
    """score_layers for several metrics from the same single dense pass: {metric: LayerScores}."""
    unknown = [m for m in metrics if m not in METRICS]
    if unknown or not metrics:
        raise ScoreError(f"unknown metric {unknown or metrics!r}; expected some of {', '.join(METRICS)}")
    check_batch_size(batch_size)
    spec = spec_for(model)
    calib = as_calibration(calibration, vocab_size=model.config.vocab_size,
                           max_positions=getattr(model.config, "max_position_embeddings", None))
    home = next(model.parameters()).device
    device = torch.device(device) if device is not None else home
    signal_device = torch.device(signal_device) if signal_device is not None else device
    layers = model.get_submodule(spec.layers)
    sums = {m: torch.zeros(len(layers), dtype=torch.float64) for m in metrics}  # [L] streamed sums
    valid = int(calib.attention_mask.sum())

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            sig = capture_layer_inputs(model, spec, calib, batch_size, device, signal_device)
            bar = tqdm(range(len(layers)), desc="scoring layers", unit="layer", disable=not progress)
            for i in bar:
                layer = layers[i].to(device)
                for b, (x, mask, kwargs) in enumerate(zip(sig.inputs, sig.masks, sig.kwargs)):
                    x = x.to(device)  # [B, T, D]
                    y = layer(x, **move_to(kwargs, device))
                    y = zero_pads(y[0] if isinstance(y, tuple) else y, mask)  # [B, T, D]
                    keep = mask.to(device).bool()
                    for m in metrics:
                        per_token = token_scores(x, y, m)  # [B, T]
                        sums[m][i] += torch.where(keep, per_token, torch.zeros_like(per_token)).sum().cpu()
                    sig.inputs[b] = y.to(signal_device)
                layers[i] = layer.to(home)
    finally:
        model.train(was_training)
    data = {"id": data_id, "fingerprint": calib.fingerprint(), "num_samples": int(calib.input_ids.shape[0]),
            "seq_len": int(calib.input_ids.shape[1]), "num_tokens": valid}
    provenance = {"model": _model_identity(model, model_id), "data": data, "batch_size": batch_size}
    config = json.loads(model.config.to_json_string(use_diff=False))
    log.info("scored %d layers (%s) over %d tokens", len(layers), ", ".join(metrics), valid)
    return {m: LayerScores(values=tuple(float(v) / valid for v in sums[m]), metric=m, num_tokens=valid,
                           config=config, provenance=provenance) for m in metrics}
