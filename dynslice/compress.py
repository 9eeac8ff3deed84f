"""The layer loop: fuse norms, then rotate and slice one layer at a time over streamed calibration signals.

Per layer: one attention pass and one MLP pass over the calibration set (sequential blocks), or one pass
of both (parallel blocks); 2 (resp. 1) covariances accumulated in float64; one eigendecomposition each.
Layers visit the compute device one at a time; signals may stay on another device (e.g. the CPU).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from dynslice.architectures import ArchSpec, get_path, spec_for
from dynslice.calibration import Calibration, as_calibration
from dynslice.errors import DynsliceError
from dynslice.fusion import fuse_norms
from dynslice.loopstate import LoopState
from dynslice.pca import Covariance, pca_basis
from dynslice.plan import SlicePlan
from dynslice.rotate import as_parameter, rotate_embedding, rotate_inputs, rotate_outputs
from dynslice.sliced.modeling_dynslice import FORMAT_VERSION, structure_block

log = logging.getLogger(__name__)


SPECTRUM = "__spectrum__."  # prefix of the eigenvalues stored beside a layer's weights in the loop state


class _Captured(Exception):
    """Raised by the hook on layer 0 once it has seen the layer's inputs."""


@dataclass
class _Signals:
    inputs: list[torch.Tensor]  # per batch [B, T, d_i], on the signal device
    masks: list[torch.Tensor]  # per batch [B, T]
    kwargs: list[dict[str, Any]]  # per batch: what the model passes every decoder layer (masks, rotary, ...)


def move_to(obj: Any, device: torch.device) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, (tuple, list)):
        return type(obj)(move_to(o, device) for o in obj)
    if isinstance(obj, dict):
        return {k: move_to(v, device) for k, v in obj.items()}
    return obj


def capture_layer_inputs(model: nn.Module, spec: ArchSpec, calib: Calibration, batch_size: int,
                         device: torch.device, signal_device: torch.device, keep_inputs: bool = True) -> _Signals:
    """Run the embeddings (only) and record layer 0's inputs and keyword arguments per batch."""
    root_path = spec.layers.rpartition(".")[0]
    root, layers = get_path(model, root_path), get_path(model, spec.layers)
    pre = [m for name, m in root.named_children() if m is not layers]
    homes = [next(m.parameters(), next(m.buffers(), torch.empty(0))).device for m in pre]
    seen: dict[str, Any] = {}

    def hook(module, args, kwargs):
        seen["x"] = args[0] if args else kwargs.pop("hidden_states")
        seen["kwargs"] = {k: v for k, v in kwargs.items() if k != "hidden_states"}
        raise _Captured

    handle = layers[0].register_forward_pre_hook(hook, with_kwargs=True)
    signals = _Signals([], [], [])
    try:
        for m in pre:
            m.to(device)
        for ids, mask in calib.batches(batch_size):
            try:
                root(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False)
            except _Captured:
                pass
            else:
                raise DynsliceError("the model never reached its first decoder layer")
            kwargs = dict(seen["kwargs"])
            kwargs.pop("use_cache", None)
            kwargs.pop("cache", None)
            kwargs.pop("past_key_values", None)
            signals.kwargs.append(move_to(kwargs, signal_device))
            signals.masks.append(mask)
            if keep_inputs:
                signals.inputs.append(zero_pads(seen["x"], mask).to(signal_device))
    finally:
        handle.remove()
        for m, home in zip(pre, homes):
            m.to(home)
    return signals


def zero_pads(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Pad positions carry no information; zeroing them keeps NaN from fully masked rows out of real tokens."""
    if bool(mask.all()):
        return x
    return torch.where(mask.to(x.device).bool()[..., None], x, torch.zeros((), dtype=x.dtype, device=x.device))


def _basis_of(outputs: list[torch.Tensor], masks: list[torch.Tensor], device: torch.device,
              where: str) -> tuple[torch.Tensor, torch.Tensor]:
    cov = Covariance(outputs[0].shape[-1], device)
    for x, m in zip(outputs, masks):
        cov.add(x.to(device), m)
    return pca_basis(cov, where)


def _plus_shortcut(update: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """update [B, T, D] + x [B, T, d] zero-padded to D (x holds the leading components of the basis)."""
    update[..., : x.shape[-1]] += x
    return update


class _Writer:
    """A linear that writes the stream: rotated to the full current basis for the pass, then to its final basis
    from the original weights (one rounding in the model dtype, not two)."""

    def __init__(self, linear: nn.Linear):
        self.linear = linear
        self.weight = linear.weight.data
        self.bias = None if linear.bias is None else linear.bias.data

    def rotate(self, q: torch.Tensor) -> None:
        self.linear.weight = nn.Parameter(self.weight, requires_grad=False)
        if self.bias is not None:
            self.linear.bias = nn.Parameter(self.bias, requires_grad=False)
        self.linear.out_features = self.weight.shape[0]
        rotate_outputs(self.linear, q)


# Signals are kept in the basis of the last PCA, q ([D, D], absolute): a layer's shortcut then needs no
# matmul (the sliced input is the leading columns of the full one) and its writers are pre-rotated to q, so
# the new PCA is taken in q's basis (r) and the absolute basis is q @ r. Per layer this costs one
# projection of the signals per PCA, instead of a reconstruction and a projection.

def _slice_sequential(block: nn.Module, spec: ArchSpec, q: torch.Tensor, widths: tuple[int, int, int],
                      sig: _Signals, device: torch.device, signal_device: torch.device, where: str) -> torch.Tensor:
    d_in, d_mid, d_out = widths
    full = q.shape[0]
    attn_out, mlp_out = _Writer(get_path(block, spec.attn_output)), _Writer(get_path(block, spec.mlp_output))
    for path in spec.attn_inputs:
        rotate_inputs(get_path(block, path), q[:, :d_in])
    attn_out.rotate(q)
    like = attn_out.weight
    cov = Covariance(full, device)
    for b, (x, m, kw) in enumerate(zip(sig.inputs, sig.masks, sig.kwargs)):
        x = x.to(device)
        mid = zero_pads(_plus_shortcut(block.attend(block.norm_attn(x), **move_to(kw, device)), x), m)  # [B, T, D]
        cov.add(mid, m)
        sig.inputs[b] = mid.to(signal_device)
    r_mid, spectrum_mid = pca_basis(cov, f"{where} attention output")
    q_mid = q @ r_mid
    block.attn_shortcut = as_parameter(r_mid[:d_in, :d_mid], like)
    attn_out.rotate(q_mid[:, :d_mid])
    for path in spec.mlp_inputs:
        rotate_inputs(get_path(block, path), q_mid[:, :d_mid])
    mlp_out.rotate(q_mid)
    to_mid = r_mid[:, :d_mid].to(device, like.dtype)  # [D, d_mid]
    cov = Covariance(full, device)
    for b, (mid, m) in enumerate(zip(sig.inputs, sig.masks)):
        h = mid.to(device) @ to_mid
        out = zero_pads(_plus_shortcut(block.feed_forward(block.norm_mlp(h)), h), m)  # [B, T, D]
        cov.add(out, m)
        sig.inputs[b] = out.to(signal_device)
    r_out, spectrum_out = pca_basis(cov, f"{where} output")
    block.mlp_shortcut = as_parameter(r_out[:d_mid, :d_out], like)
    mlp_out.rotate((q_mid @ r_out)[:, :d_out])
    _project(sig, r_out[:, :d_out], device, signal_device)
    return q_mid @ r_out, {"mid": spectrum_mid, "out": spectrum_out}


def _slice_parallel(block: nn.Module, spec: ArchSpec, q: torch.Tensor, widths: tuple[int, int, int],
                    sig: _Signals, device: torch.device, signal_device: torch.device, where: str) -> torch.Tensor:
    d_in, _, d_out = widths
    full = q.shape[0]
    writers = [_Writer(get_path(block, spec.attn_output)), _Writer(get_path(block, spec.mlp_output))]
    for path in spec.attn_inputs + spec.mlp_inputs:
        rotate_inputs(get_path(block, path), q[:, :d_in])
    for writer in writers:
        writer.rotate(q)
    cov = Covariance(full, device)
    for b, (x, m, kw) in enumerate(zip(sig.inputs, sig.masks, sig.kwargs)):
        x = x.to(device)
        normed = block.norm_attn(x)
        out = _plus_shortcut(block.attend(normed, **move_to(kw, device)) + block.feed_forward(normed), x)
        out = zero_pads(out, m)
        cov.add(out, m)
        sig.inputs[b] = out.to(signal_device)
    r, spectrum = pca_basis(cov, f"{where} output")
    q_next = q @ r
    block.shortcut = as_parameter(r[:d_in, :d_out], writers[0].weight)
    for writer in writers:
        writer.rotate(q_next[:, :d_out])
    _project(sig, r[:, :d_out], device, signal_device)
    return q_next, {"out": spectrum}


def _project(sig: _Signals, basis: torch.Tensor, device: torch.device, signal_device: torch.device) -> None:
    """Next layer's inputs: the signals in the new basis, sliced."""
    for b, x in enumerate(sig.inputs):
        sig.inputs[b] = (x.to(device) @ basis.to(device, x.dtype)).to(signal_device)


_SLICERS = {"sequential": _slice_sequential, "parallel": _slice_parallel}


def _fingerprint(model: nn.Module, calib: Calibration, plan: SlicePlan, batch_size: int) -> str:
    """What a saved loop state must match: the architecture, a sample of every weight, the dtype, the plan,
    the batching and the calibration tokens (not where the model was loaded from, nor library versions)."""
    h = hashlib.sha256()
    config = {k: v for k, v in model.config.to_dict().items() if k not in ("_name_or_path", "transformers_version")}
    h.update(json.dumps(config, sort_keys=True, default=str).encode())
    for name, p in model.named_parameters():
        flat = p.detach().reshape(-1)
        sample = flat[:: max(1, flat.numel() // 256)].to("cpu", torch.float64)  # cheap, catches replaced weights
        h.update(name.encode() + sample.numpy().tobytes())
    h.update(str(next(model.parameters()).dtype).encode())
    h.update(json.dumps({"widths": plan.widths, "mid": plan.mid, "batch": batch_size}).encode())
    h.update(calib.fingerprint().encode())
    return h.hexdigest()


def _embedding_tensors(model: nn.Module, spec: ArchSpec) -> dict[str, torch.Tensor]:
    return {path: get_path(model, path).weight.data for path in spec.embeddings}


def slice_model(model: nn.Module, calibration, plan: SlicePlan, *, batch_size: int = 8,
                device: str | torch.device | None = None, state_dir: str | None = None,
                signal_device: str | torch.device | None = None, checkpoint_every: int = 1,
                progress: bool = True, spectra: dict | None = None,
                storage_options: dict | None = None) -> nn.Module:
    """Rotate and slice `model` in place with the per-layer widths of `plan`; returns the model.

    calibration: LongTensor [N, T] of token ids, or a dict with `input_ids` and `attention_mask`.
    device: where each layer is computed (default: where the model is); the model may stay on the CPU.
    signal_device: where calibration signals are kept between layers (default: `device`).
    state_dir: folder or fsspec URI; the loop state is saved there every `checkpoint_every` layers and a
        run given the same folder resumes from it, producing the same bytes as an uninterrupted run.
    storage_options: fsspec options for `state_dir` (endpoint, credentials); default: the environment's.
    spectra: if a dict is given, it receives the PCA eigenvalues (float64 tensors [D]) of every basis:
        "embedding", then "layer.{i}.mid" (sequential blocks) and "layer.{i}.out"; they survive a resume.
    """
    spectra = {} if spectra is None else spectra
    if getattr(model.config, "dynslice", None):
        raise DynsliceError("this model is already sliced")
    spec = spec_for(model)
    plan.check(model.config)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise DynsliceError(f"batch_size must be a positive integer, got {batch_size!r}")
    if checkpoint_every < 1:
        raise DynsliceError(f"checkpoint_every must be >= 1, got {checkpoint_every}")
    calib = as_calibration(calibration, vocab_size=model.config.vocab_size)
    home = next(model.parameters()).device
    device = torch.device(device) if device is not None else home
    signal_device = torch.device(signal_device) if signal_device is not None else device
    state = (LoopState(state_dir, _fingerprint(model, calib, plan, batch_size), storage_options)
             if state_dir else None)
    resume = state.load() if state else None

    model.eval()
    with torch.no_grad():
        fuse_norms(model, spec)
        arch = spec.to_dict()
        layers = get_path(model, spec.layers)
        sig = capture_layer_inputs(model, spec, calib, batch_size, device, signal_device, keep_inputs=resume is None)
        if resume is None:
            first = 0
            q, spectrum = _basis_of(sig.inputs, sig.masks, device, "embedding")
            spectra["embedding"] = spectrum.cpu()
            for path in spec.embeddings:
                rotate_embedding(get_path(model, path), q[:, :plan.widths[0]])
            _project(sig, q[:, :plan.widths[0]], device, signal_device)
            if state:
                state.save_embeddings({**_embedding_tensors(model, spec), SPECTRUM + "embedding": spectra["embedding"]})
        else:
            first, q = resume.next_layer, resume.basis.to(device)
            sig.inputs = [x.to(signal_device) for x in resume.inputs]
            saved = state.embeddings()
            spectra["embedding"] = saved[SPECTRUM + "embedding"]
            for path in spec.embeddings:
                get_path(model, path).weight = nn.Parameter(saved[path].to(home), requires_grad=False)
                get_path(model, path).embedding_dim = plan.widths[0]
            for i in range(first):
                structure_block(layers[i], arch, plan.widths[i], plan.mid[i], plan.widths[i + 1])
                weights = state.layer(i)
                for name in [k for k in weights if k.startswith(SPECTRUM)]:
                    spectra[f"layer.{i}.{name.removeprefix(SPECTRUM)}"] = weights.pop(name)
                layers[i].load_state_dict(weights)
        slicer = _SLICERS[spec.topology]
        saved_upto = first  # layers below this index are already in the state folder
        bar = tqdm(range(first, plan.num_layers), desc="slicing layers", unit="layer", disable=not progress,
                   initial=first, total=plan.num_layers)
        for i in bar:
            block = layers[i].to(device)
            widths = (plan.widths[i], plan.mid[i], plan.widths[i + 1])
            q, layer_spectra = slicer(block, spec, q, widths, sig, device, signal_device, f"layer {i}")
            spectra.update({f"layer.{i}.{k}": v.cpu() for k, v in layer_spectra.items()})
            layers[i] = block.to(home)
            if state and ((i + 1) % checkpoint_every == 0 or i + 1 == plan.num_layers):
                for j in range(saved_upto, i + 1):
                    own = {SPECTRUM + k.rpartition(".")[2]: v for k, v in spectra.items()
                           if k.startswith(f"layer.{j}.")}
                    state.save_layer(j, {**layers[j].state_dict(), **own})
                state.commit(i + 1, q, sig.inputs)
                saved_upto = i + 1
        head = get_path(model, spec.head)
        rotate_inputs(head, q[:, :plan.widths[-1]])
    model.config.dynslice = {"format": FORMAT_VERSION, "base_class": type(model).__name__, "arch": arch,
                             "widths": list(plan.widths), "mid": list(plan.mid), "plan": plan.to_dict()}
    log.info("sliced %s: %d layers, %d parameters", type(model).__name__, plan.num_layers,
             sum(p.numel() for p in model.parameters()))
    return model
