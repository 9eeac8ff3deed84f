"""The layer loop: fuse norms, then rotate and slice one layer at a time over streamed calibration signals.

Per layer: one attention pass and one MLP pass over the calibration set (sequential blocks), or one pass
of both (parallel blocks); 2 (resp. 1) covariances accumulated in float64; one eigendecomposition each.
Layers visit the compute device one at a time; signals may stay on another device (e.g. the CPU).

A head tied to the embedding stays tied when it can (dynslice.fusion.untie_reason): the head then holds the
token table in the embedding's basis Q_0 and the last layer writes the stream in Q_0 (see slicing.tie_head).
"""

from __future__ import annotations

import hashlib
import json
import logging

import torch
from torch import nn
from tqdm.auto import tqdm

from dynslice.architectures import ArchSpec, spec_for
from dynslice.calibration import Calibration, as_calibration, check_batch_size
from dynslice.capture import capture_layer_inputs
from dynslice.counts import check_plan, unique_parameters
from dynslice.errors import DynsliceError, PlanError
from dynslice.fingerprints import weights_fingerprint
from dynslice.fusion import fuse_ends, fuse_head, fuse_layer, shares_table, ties_embeddings, untie_reason
from dynslice.loopstate import LoopState, Resume
from dynslice.phases import phase
from dynslice.plan import SlicePlan
from dynslice.rotate import rotate_inputs
from dynslice.sliced.modeling_dynslice import mark_sliced, sliced_meta, structure_block, tie_head_modules, wrap_layer
from dynslice.slicing import SLICERS, slice_embeddings, tie_head

log = logging.getLogger(__name__)


_BASIS_KEY = "embedding_basis"  # Q_0 in the loop state's embeddings file (tied head: the last layer writes in it)


def _fingerprint(model: nn.Module, calib: Calibration, plan: SlicePlan, batch_size: int, tied: bool) -> str:
    """What a saved loop state must match: the architecture, a sample of every weight, the dtype, the plan (and
    whether the head stays tied), the batching and the calibration tokens (not where the model was loaded from,
    nor library versions)."""
    h = hashlib.sha256()
    config = {k: v for k, v in model.config.to_dict().items() if k not in ("_name_or_path", "transformers_version")}
    h.update(json.dumps(config, sort_keys=True, default=str).encode())
    h.update(weights_fingerprint(model).encode())
    h.update(json.dumps({"widths": plan.widths, "mid": plan.mid, "batch": batch_size, "tied_head": tied}).encode())
    h.update(calib.fingerprint().encode())
    return h.hexdigest()


def _tables(spec: ArchSpec, tied: bool) -> tuple[str, ...]:
    """The embedding tables the embedding step rotates and slices (a tied head holds the token table)."""
    return spec.embeddings[1:] if tied else spec.embeddings


def _ends_state(model: nn.Module, spec: ArchSpec, tied: bool, q0: torch.Tensor) -> dict[str, torch.Tensor]:
    """What the embedding step made, for the loop state: the sliced tables, and (tied) the head's tensors and Q_0."""
    state = {p: model.get_submodule(p).weight.data for p in _tables(spec, tied)}
    if tied:
        state.update({f"{spec.head}.{k}": v for k, v in model.get_submodule(spec.head).state_dict().items()})
        state[_BASIS_KEY] = q0
    return state


def _restore(model: nn.Module, spec: ArchSpec, plan: SlicePlan, saved: Resume, home: torch.device,
             tied: bool) -> torch.Tensor | None:
    """Put the checkpoint's embedding step and finished layers into the (fused, wrapped) model; returns Q_0
    (tied head; the basis of the sliced tables is not kept otherwise, and the loop needs it only then)."""
    for path in _tables(spec, tied):
        emb = model.get_submodule(path)
        emb.weight = nn.Parameter(saved.embeddings[path].to(home), requires_grad=False)
        emb.embedding_dim = plan.widths[0]
    q0 = None
    if tied:
        head = tie_head_modules(model, spec.to_dict(), plan.widths[0])
        for name, _ in list(head.named_parameters(recurse=False)):
            setattr(head, name, nn.Parameter(saved.embeddings[f"{spec.head}.{name}"].to(home), requires_grad=False))
        q0 = saved.embeddings[_BASIS_KEY]
    arch = spec.to_dict()
    for i, weights in enumerate(saved.layers):
        block = wrap_layer(model, arch, i, model.config.hidden_size)  # its weights come from the checkpoint
        structure_block(block, arch, plan.widths[i], plan.mid[i], plan.widths[i + 1])
        block.load_state_dict(weights)
    return q0


def _keeps_tied_head(model: nn.Module, spec: ArchSpec, plan: SlicePlan) -> bool:
    """untie_reason's decision, on the live model (which must really share the table); says why it unties."""
    reason = untie_reason(model.config, spec, plan)
    if reason is None and not shares_table(model, spec):
        reason = "the config ties the head, but its weight is not the embedding's: the head is untied"
    if reason is not None and ties_embeddings(model.config):
        log.info("%s: %s", type(model).__name__, reason)
    return reason is None


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
    if sliced_meta(model.config) is not None:
        raise DynsliceError("this model is already sliced or pruned: slice the dense model")
    spec = spec_for(model)
    check_plan(plan, model.config)
    if plan.removes:
        raise PlanError("this plan removes layers or sublayers and slices nothing: apply it with "
                        "dynslice.removal.prune(model, plan) (or `dynslice slice --plan`)")
    tied = _keeps_tied_head(model, spec, plan)
    check_batch_size(batch_size)
    if not isinstance(checkpoint_every, int) or checkpoint_every < 1:
        raise DynsliceError(f"checkpoint_every must be a positive integer, got {checkpoint_every!r}")
    calib = as_calibration(calibration, vocab_size=model.config.vocab_size,
                           max_positions=getattr(model.config, "max_position_embeddings", None))
    home = next(model.parameters()).device
    device = torch.device(device) if device is not None else home
    signal_device = torch.device(signal_device) if signal_device is not None else device
    fingerprint = _fingerprint(model, calib, plan, batch_size, tied)
    state = LoopState(state_dir, fingerprint, storage_options) if state_dir else None
    saved = state.load() if state else None

    model.eval()
    with torch.no_grad():
        with phase("norm fusion"):
            final_gain = fuse_ends(model, spec, tied_head=tied)
        with phase("embedding pass"):
            sig = capture_layer_inputs(model, spec, calib, batch_size, device, signal_device,
                                       keep_inputs=saved is None)
        if saved is None:
            first = 0
            q, spectrum = slice_embeddings(model, _tables(spec, tied), plan.widths[0], sig, device, signal_device)
            q0 = q
            if tied:
                with phase("weight updates"):
                    tie_head(model, spec, q, final_gain, plan.widths[0])
            spectra["embedding"] = spectrum.cpu()
            if state:
                state.save_embeddings(_ends_state(model, spec, tied, q))
        else:
            first, q = saved.next_layer, saved.basis.to(device)
            sig.inputs = [x.to(signal_device) for x in saved.inputs]
            spectra.update(saved.spectra)
            q0 = _restore(model, spec, plan, saved, home, tied)

        layers, slicer = model.get_submodule(spec.layers), SLICERS[spec.topology]
        unsaved = first  # layers from here on are not in the state folder yet
        bar = tqdm(range(first, plan.num_layers), desc="slicing layers", unit="layer", disable=not progress,
                   initial=first, total=plan.num_layers)
        for i in bar:
            with phase("norm fusion"):
                block = fuse_layer(model, spec, i).to(device)
            widths = (plan.widths[i], plan.mid[i], plan.widths[i + 1])
            # a tied head reads the stream in Q_0's basis: the last layer writes it there (d_L = D: exact)
            out_basis = q0.to(device) if tied and i == plan.num_layers - 1 else None
            q, layer_spectra = slicer(block, spec, q, widths, sig, device, signal_device, f"layer {i}", out_basis)
            spectra.update({f"layer.{i}.{k}": v.cpu() for k, v in layer_spectra.items()})
            layers[i] = block.to(home)
            if state and ((i + 1) % checkpoint_every == 0 or i + 1 == plan.num_layers):
                with phase("checkpoints"):
                    for j in range(unsaved, i + 1):
                        state.save_layer(j, layers[j].state_dict())
                    state.commit(i + 1, q, sig.inputs, spectra)
                unsaved = i + 1
        with phase("norm fusion"):
            fuse_head(model, spec, tied_head=tied)
        if not tied:  # (a tied head was given its final weights with the embedding)
            with phase("weight updates"):
                rotate_inputs(model.get_submodule(spec.head), q[:, :plan.widths[-1]])
    mark_sliced(model, spec.to_dict(), plan.to_dict(), tied_head=tied)
    log.info("sliced %s: %d layers, %d parameters", type(model).__name__, plan.num_layers, unique_parameters(model))
    return model
