"""Stage `calibration`: the calibration token windows, sampled from the data with the model's tokenizer.

Key: the tokenizer (its fingerprint), the data (the bytes or hub revision of the split read) and the sampling.
No model weights are read here: the tokenizer decides the tokens.
"""

from __future__ import annotations

import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from dynslice.config import CalibrationConfig, ModelConfig
from dynslice.data import calibration_windows, data_key, resolve_data, tokenizer_fingerprint
from dynslice.models import tokenizer_of
from dynslice.pipeline.stage import Output, Stage, run_stage
from dynslice.store import ArtifactRef, ArtifactStore

STAGE = Stage("calibration", code=(__name__,), outputs=("calibration.safetensors",))


def run(store: ArtifactStore, model: ModelConfig, calibration: CalibrationConfig) -> ArtifactRef:
    c = calibration
    tokenizer = tokenizer_of(model.source, model.revision)
    source = resolve_data(c.source, c.split)
    inputs = {"tokenizer": tokenizer_fingerprint(tokenizer), "data": data_key(source), "split": source.split,
              "sampling": {"nsamples": c.nsamples, "seqlen": c.seqlen, "seed": c.seed, "glue": c.glue,
                           "pad_short": c.pad_short}}

    def compute(key: str) -> Output:
        sample = calibration_windows(c.source, tokenizer, c.nsamples, c.seqlen, split=c.split, seed=c.seed,
                                     glue=c.glue, pad_short=c.pad_short)
        result = {"data": sample.identity.to_dict(), "num_tokens": int(sample.attention_mask.sum()),
                  "nsamples": c.nsamples, "seqlen": c.seqlen}
        return Output(result, {"calibration.safetensors": save_tensors(sample.as_dict())})

    return run_stage(store, STAGE, inputs, compute)


def tensors(store: ArtifactStore, ref: ArtifactRef) -> dict[str, torch.Tensor]:
    """The published windows: {"input_ids": [N, T], "attention_mask": [N, T]}."""
    return load_tensors(store.read_bytes(ref, "calibration.safetensors"))
