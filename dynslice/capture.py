"""The inputs of the first decoder layer over a calibration set, captured once and then streamed layer by layer.

Both the layer scores (a dense pass) and the slicing loop start here: the embeddings run once per batch, the
first layer's inputs and the keyword arguments the model gives every decoder layer (masks, rotary position
embeddings, ...) are recorded, and the model's own forward stops there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from dynslice.architectures import ArchSpec
from dynslice.calibration import Calibration
from dynslice.errors import UnsupportedArchitectureError

# what the model passes its layers but a layer-by-layer pass must not: the KV cache and its switches
_NOT_FORWARDED = ("use_cache", "cache", "past_key_values", "hidden_states")


class _Captured(Exception):
    """Raised by the hook on layer 0 once it has seen the layer's inputs."""


@dataclass
class LayerInputs:
    """Per calibration batch: the signal entering the current layer, its mask and the layer's keyword args."""

    inputs: list[torch.Tensor]  # per batch [B, T, d], on the signal device
    masks: list[torch.Tensor]  # per batch [B, T], 1 = real token
    kwargs: list[dict[str, Any]]  # per batch: attention masks, rotary embeddings, ...


def move_to(obj: Any, device: torch.device) -> Any:
    """Tensors inside (nested) tuples, lists and dicts moved to `device`; anything else as it is."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, (tuple, list)):
        return type(obj)(move_to(o, device) for o in obj)
    if isinstance(obj, dict):
        return {k: move_to(v, device) for k, v in obj.items()}
    return obj


def zero_pads(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Pad positions carry no information; zeroing them keeps NaN from fully masked rows out of real tokens."""
    if bool(mask.all()):
        return x
    return torch.where(mask.to(x.device).bool()[..., None], x, torch.zeros((), dtype=x.dtype, device=x.device))


def capture_layer_inputs(model: nn.Module, spec: ArchSpec, calib: Calibration, batch_size: int,
                         device: torch.device, signal_device: torch.device, keep_inputs: bool = True) -> LayerInputs:
    """Run the embeddings (only) and record layer 0's inputs and keyword arguments per batch.

    The modules before the layers visit `device` for the pass and go back home afterwards."""
    root_path = spec.layers.rpartition(".")[0]
    root, layers = model.get_submodule(root_path), model.get_submodule(spec.layers)
    pre = [m for _, m in root.named_children() if m is not layers]
    homes = [next(m.parameters(), next(m.buffers(), torch.empty(0))).device for m in pre]
    seen: dict[str, Any] = {}

    def hook(module, args, kwargs):
        seen["x"] = args[0] if args else kwargs["hidden_states"]
        seen["kwargs"] = {k: v for k, v in kwargs.items() if k not in _NOT_FORWARDED}
        raise _Captured

    handle = layers[0].register_forward_pre_hook(hook, with_kwargs=True)
    captured = LayerInputs([], [], [])
    try:
        for m in pre:
            m.to(device)
        for ids, mask in calib.batches(batch_size):
            try:
                root(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False)
            except _Captured:
                pass
            else:
                raise UnsupportedArchitectureError(f"{type(model).__name__} never reached its first decoder layer "
                                                   f"`{spec.layers}.0`")
            captured.kwargs.append(move_to(seen["kwargs"], signal_device))
            captured.masks.append(mask)
            if keep_inputs:
                captured.inputs.append(zero_pads(seen["x"], mask).to(signal_device))
    finally:
        handle.remove()
        for m, home in zip(pre, homes):
            m.to(home)
    return captured
