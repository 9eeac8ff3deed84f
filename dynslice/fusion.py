"""Norm fusion: fold each norm's scale (and bias) into the linears that read it.

After fusion every norm is a scale-free RMSNorm over the original width, the head is untied from the
embedding, and (LayerNorm families) the residual stream is kept zero-mean by centring the embeddings and
the linears that write the stream, so LayerNorm(x) == RMSNorm(x). The logits do not change.
"""

from __future__ import annotations

import torch
from torch import nn

from dynslice.architectures import ArchSpec
from dynslice.sliced.modeling_dynslice import reads_norm_with_bias, replace_norms, wrap_layers


def _fold_into(norm: nn.Module, linears: list[nn.Linear], add_bias: bool) -> None:
    """linear(norm(x) * g + beta) == linear'(norm(x)) with W' = W diag(g), b' = b + W beta (float64 math)."""
    gain = getattr(norm, "weight", None)
    beta = getattr(norm, "bias", None)
    for linear in linears:
        w = linear.weight.data.double()
        bias = None if linear.bias is None else linear.bias.data.double()
        if beta is not None:
            shift = w @ beta.data.double().to(w.device)
            bias = shift if bias is None else bias + shift
        if bias is None and add_bias:
            bias = torch.zeros(w.shape[0], dtype=torch.float64, device=w.device)
        if gain is not None:
            w = w * gain.data.double().to(w.device)
        dtype = linear.weight.dtype
        linear.weight = nn.Parameter(w.to(dtype), requires_grad=False)
        if bias is not None:
            linear.bias = nn.Parameter(bias.to(dtype), requires_grad=False)


def _centre_rows(weight: torch.Tensor) -> torch.Tensor:
    """Subtract each row's mean across the stream dimension (the last one)."""
    w = weight.double()
    return (w - w.mean(dim=-1, keepdim=True)).to(weight.dtype)


def _centre_writer(linear: nn.Linear) -> None:
    """y = W x + b written into the stream becomes y - mean(y): centre W's columns and b."""
    w = linear.weight.data.double()
    linear.weight = nn.Parameter((w - w.mean(dim=0, keepdim=True)).to(linear.weight.dtype), requires_grad=False)
    if linear.bias is not None:
        b = linear.bias.data.double()
        linear.bias = nn.Parameter((b - b.mean()).to(linear.bias.dtype), requires_grad=False)


def untie_head(model: nn.Module, spec: ArchSpec) -> None:
    head = model.get_submodule(spec.head)
    embedding_weights = {model.get_submodule(p).weight.data_ptr() for p in spec.embeddings}
    if head.weight.data_ptr() in embedding_weights:
        head.weight = nn.Parameter(head.weight.data.clone(), requires_grad=False)
    model.config.tie_word_embeddings = False
    text_config = getattr(model.config, "get_text_config", lambda: model.config)()
    text_config.tie_word_embeddings = False


def fuse_norms(model: nn.Module, spec: ArchSpec) -> None:
    """Fold norms into readers, centre LayerNorm streams, untie the head, wrap layers in shortcut blocks."""
    arch = spec.to_dict()
    add_bias = reads_norm_with_bias(arch)
    untie_head(model, spec)
    layers = model.get_submodule(spec.layers)
    if spec.norm == "layer":
        for path in spec.embeddings:
            emb = model.get_submodule(path)
            emb.weight = nn.Parameter(_centre_rows(emb.weight.data), requires_grad=False)
        for layer in layers:
            _centre_writer(layer.get_submodule(spec.attn_output))
            _centre_writer(layer.get_submodule(spec.mlp_output))
    for layer in layers:
        attn_readers = [layer.get_submodule(p) for p in spec.attn_inputs]
        mlp_readers = [layer.get_submodule(p) for p in spec.mlp_inputs]
        if spec.topology == "parallel":
            _fold_into(layer.get_submodule(spec.attn_norm), attn_readers + mlp_readers, add_bias)
        else:
            _fold_into(layer.get_submodule(spec.attn_norm), attn_readers, add_bias)
            _fold_into(layer.get_submodule(spec.mlp_norm), mlp_readers, add_bias)
    _fold_into(model.get_submodule(spec.final_norm), [model.get_submodule(spec.head)], add_bias)
    replace_norms(model, arch, model.config.hidden_size)
    wrap_layers(model, arch)
