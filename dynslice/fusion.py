"""Norm fusion: fold each norm's scale (and bias) into the linears that read it.

After fusion every norm is a scale-free RMSNorm over the original width and (LayerNorm families) the residual
stream is kept zero-mean by centring the embeddings and the linears that write the stream, so
LayerNorm(x) == RMSNorm(x). The logits do not change.

Tied heads: a head tied to the embedding stays tied when it can (`untie_reason` is None): then the final norm's
scale is not folded into the shared table but returned, and becomes a [D, D] matrix of the head once the
embedding's basis Q_0 is known (slicing.tie_head). Otherwise the head is untied here (SliceGPT's way).
"""

from __future__ import annotations

import torch
from torch import nn

from dynslice.architectures import ArchSpec
from dynslice.plan import SlicePlan
from dynslice.sliced.modeling_dynslice import (reads_norm_with_bias, replace_final_norm, transformers_tying_off,
                                               wrap_layer)


_ROW_CHUNK = 8192  # rows folded at a time: a head of 150k x 8k rows never has a whole float64 copy in memory


def _fold_into(norm: nn.Module, linears: list[nn.Linear], add_bias: bool) -> None:
    """linear(norm(x) * g + beta) == linear'(norm(x)) with W' = W diag(g), b' = b + W beta.

    Float64 math (one rounding to the weight's dtype at the end), a chunk of rows at a time and in place, so a
    vocabulary-sized head costs one chunk of extra memory, not a float64 copy of itself."""
    gain = getattr(norm, "weight", None)
    beta = getattr(norm, "bias", None)
    for linear in linears:
        w = linear.weight.data  # [out, D], updated in place
        g = None if gain is None else gain.data.to(w.device, torch.float64)
        b = None if beta is None else beta.data.to(w.device, torch.float64)
        shift = torch.zeros(w.shape[0], dtype=torch.float64, device=w.device) if b is not None else None
        for start in range(0, w.shape[0], _ROW_CHUNK):
            rows = w[start:start + _ROW_CHUNK].double()  # [chunk, D]
            if b is not None:
                shift[start:start + _ROW_CHUNK] = rows @ b
            if g is not None:
                w[start:start + _ROW_CHUNK] = (rows * g).to(w.dtype)
        bias = None if linear.bias is None else linear.bias.data.double()
        if shift is not None:
            bias = shift if bias is None else bias + shift
        if bias is None and add_bias:
            bias = torch.zeros(w.shape[0], dtype=torch.float64, device=w.device)
        linear.weight = nn.Parameter(w, requires_grad=False)
        if bias is not None:
            linear.bias = nn.Parameter(bias.to(w.dtype), requires_grad=False)


def _centre_rows(weight: torch.Tensor) -> None:
    """Subtract each row's mean across the stream dimension (the last one), in place, a chunk at a time."""
    for start in range(0, weight.shape[0], _ROW_CHUNK):
        rows = weight[start:start + _ROW_CHUNK].double()
        weight[start:start + _ROW_CHUNK] = (rows - rows.mean(dim=-1, keepdim=True)).to(weight.dtype)


def _centre_writer(linear: nn.Linear) -> None:
    """y = W x + b written into the stream becomes y - mean(y): centre W's columns and b."""
    w = linear.weight.data.double()
    linear.weight = nn.Parameter((w - w.mean(dim=0, keepdim=True)).to(linear.weight.dtype), requires_grad=False)
    if linear.bias is not None:
        b = linear.bias.data.double()
        linear.bias = nn.Parameter((b - b.mean()).to(linear.bias.dtype), requires_grad=False)


def ties_embeddings(config) -> bool:
    """Whether the config ties the head to the token embedding (transformers' `tie_word_embeddings`)."""
    return bool(getattr(getattr(config, "get_text_config", lambda: config)(), "tie_word_embeddings", False))


def untie_reason(config, spec: ArchSpec, plan: SlicePlan) -> str | None:
    """Why the sliced model of `config` and `plan` cannot keep its head tied to the token embedding (the first of
    `spec.embeddings`); None when it keeps it tied. Parameter counts and the layer loop both decide here."""
    if not ties_embeddings(config):
        return "the model's head is not tied to its embedding"
    if plan.untie_head:
        return "the plan asks for an untied head (untie_head)"
    if spec.norm != "rms":
        return ("LayerNorm models centre the embedding table during fusion, so it no longer equals the head: "
                "the head is untied")
    if plan.widths[-1] != config.hidden_size:
        return (f"the last layer writes {plan.widths[-1]} of {config.hidden_size} columns: a sliced head cannot "
                "share the embedding table, so it is untied")
    return None


def shares_table(model: nn.Module, spec: ArchSpec) -> bool:
    """Whether the head's weight really is the token embedding's (a config can say tied of a model untied since)."""
    return model.get_submodule(spec.head).weight is model.get_submodule(spec.embeddings[0]).weight


def untie_head(model: nn.Module, spec: ArchSpec) -> None:
    head = model.get_submodule(spec.head)
    embedding_weights = {model.get_submodule(p).weight.data_ptr() for p in spec.embeddings}
    if head.weight.data_ptr() in embedding_weights:
        head.weight = nn.Parameter(head.weight.data.clone(), requires_grad=False)
    transformers_tying_off(model)


def fuse_ends(model: nn.Module, spec: ArchSpec, tied_head: bool = False) -> torch.Tensor | None:
    """Before the layer loop: untie the head unless `tied_head`, centre LayerNorm embedding tables. Returns, for a
    tied head, the final norm's scale g [D] (float64), which the head takes later."""
    final_gain = None
    if tied_head:  # RMSNorm only (untie_reason): a scale, no bias
        gain = getattr(model.get_submodule(spec.final_norm), "weight", None)
        final_gain = None if gain is None else gain.data.to(torch.float64).clone()
    else:
        untie_head(model, spec)
    if spec.norm == "layer":
        for path in spec.embeddings:
            _centre_rows(model.get_submodule(path).weight.data)
    return final_gain


def fuse_layer(model: nn.Module, spec: ArchSpec, index: int) -> nn.Module:
    """One decoder layer, just before it is sliced: centre its stream writers (LayerNorm), fold its norms into
    the linears that read them, and wrap it in its shortcut block (returned). Layer by layer, so only one
    layer's fused copy exists at a time."""
    layer = model.get_submodule(spec.layers)[index]
    add_bias = reads_norm_with_bias(spec.to_dict())
    if spec.norm == "layer":
        _centre_writer(layer.get_submodule(spec.attn_output))
        _centre_writer(layer.get_submodule(spec.mlp_output))
    attn_readers = [layer.get_submodule(p) for p in spec.attn_inputs]
    mlp_readers = [layer.get_submodule(p) for p in spec.mlp_inputs]
    if spec.topology == "parallel":
        _fold_into(layer.get_submodule(spec.attn_norm), attn_readers + mlp_readers, add_bias)
    else:
        _fold_into(layer.get_submodule(spec.attn_norm), attn_readers, add_bias)
        _fold_into(layer.get_submodule(spec.mlp_norm), mlp_readers, add_bias)
    return wrap_layer(model, spec.to_dict(), index, model.config.hidden_size)


def fuse_head(model: nn.Module, spec: ArchSpec, tied_head: bool = False) -> None:
    """After the loop: fold the final norm into an untied head (a tied head took its scale already); the final
    norm becomes scale-free."""
    if not tied_head:
        _fold_into(model.get_submodule(spec.final_norm), [model.get_submodule(spec.head)],
                   reads_norm_with_bias(spec.to_dict()))
    replace_final_norm(model, spec.to_dict(), model.config.hidden_size)


def fuse_norms(model: nn.Module, spec: ArchSpec, tied_head: bool = False) -> torch.Tensor | None:
    """The whole fusion at once (the layer loop does it piece by piece): fold norms into readers, centre
    LayerNorm streams, wrap layers in shortcut blocks; untie the head unless `tied_head`. Returns the final
    norm's scale for a tied head."""
    final_gain = fuse_ends(model, spec, tied_head)
    for i in range(len(model.get_submodule(spec.layers))):
        fuse_layer(model, spec, i)
    fuse_head(model, spec, tied_head)
    return final_gain
