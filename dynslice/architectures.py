"""Per-family module paths as data.

One frozen `ArchSpec` per model family, keyed by the Hugging Face class name. Paths are dotted attribute
paths: model-level ones from the `*ForCausalLM` root, layer-level ones from a decoder layer. The engine
and the saved-model loader read only these; nothing else in dynslice knows a family by name.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from torch import nn

from dynslice.errors import UnsupportedArchitectureError


@dataclass(frozen=True)
class ArchSpec:
    topology: str  # "sequential": x + attn(n1(x)), then + mlp(n2(.)); "parallel": x + attn(n(x)) + mlp(n(x))
    norm: str  # "rms" (RMSNorm) or "layer" (LayerNorm: embeddings centred, mean folded into writers)
    embeddings: tuple[str, ...]  # modules whose outputs sum to the residual stream entering layer 0
    layers: str
    final_norm: str
    head: str
    attn: str  # attention module, called with the layer's own keyword arguments
    attn_norm: str
    attn_inputs: tuple[str, ...]  # linears reading the normed stream (relative to the layer)
    attn_output: str  # linear writing the attention result into the stream
    mlp: tuple[str, ...]  # children applied in order to form the MLP, e.g. ("mlp",) or ("fc1", "act", "fc2")
    mlp_norm: str | None  # None for parallel blocks (the MLP reads attn_norm's output)
    mlp_inputs: tuple[str, ...]
    mlp_output: str
    requires: tuple[tuple[str, Any], ...] = ()  # config attributes that must have these values
    absent: tuple[str, ...] = ()  # model-level modules that must be None or missing

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ArchSpec":
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - fields
        if unknown:
            raise UnsupportedArchitectureError(f"unknown architecture fields {sorted(unknown)}")
        tupled = {k: tuple(tuple(x) if isinstance(x, list) else x for x in v) if isinstance(v, list) else v
                  for k, v in data.items()}
        return cls(**tupled)


_LLAMA = ArchSpec(
    topology="sequential",
    norm="rms",
    embeddings=("model.embed_tokens",),
    layers="model.layers",
    final_norm="model.norm",
    head="lm_head",
    attn="self_attn",
    attn_norm="input_layernorm",
    attn_inputs=("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    attn_output="self_attn.o_proj",
    mlp=("mlp",),
    mlp_norm="post_attention_layernorm",
    mlp_inputs=("mlp.gate_proj", "mlp.up_proj"),
    mlp_output="mlp.down_proj",
)

_OPT = ArchSpec(
    topology="sequential",
    norm="layer",
    embeddings=("model.decoder.embed_tokens", "model.decoder.embed_positions"),
    layers="model.decoder.layers",
    final_norm="model.decoder.final_layer_norm",
    head="lm_head",
    attn="self_attn",
    attn_norm="self_attn_layer_norm",
    attn_inputs=("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    attn_output="self_attn.out_proj",
    mlp=("fc1", "activation_fn", "fc2"),
    mlp_norm="final_layer_norm",
    mlp_inputs=("fc1",),
    mlp_output="fc2",
    requires=(("do_layer_norm_before", True), ("layer_norm_elementwise_affine", True)),
    absent=("model.decoder.project_in", "model.decoder.project_out"),
)

_PHI = ArchSpec(
    topology="parallel",
    norm="layer",
    embeddings=("model.embed_tokens",),
    layers="model.layers",
    final_norm="model.final_layernorm",
    head="lm_head",
    attn="self_attn",
    attn_norm="input_layernorm",
    attn_inputs=("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    attn_output="self_attn.dense",
    mlp=("mlp",),
    mlp_norm=None,
    mlp_inputs=("mlp.fc1",),
    mlp_output="mlp.fc2",
    requires=(("qk_layernorm", False),),
)

# Mistral, Qwen2 (q/k/v biases) and Qwen3 (per-head q/k norms, inside attention) share Llama's paths.
REGISTRY: dict[str, ArchSpec] = {
    "LlamaForCausalLM": _LLAMA,
    "MistralForCausalLM": _LLAMA,
    "Qwen2ForCausalLM": _LLAMA,
    "Qwen3ForCausalLM": _LLAMA,
    "OPTForCausalLM": _OPT,
    "PhiForCausalLM": _PHI,
}


def supported() -> list[str]:
    return sorted(REGISTRY)


def _optional_submodule(model: nn.Module, path: str) -> nn.Module | None:
    try:
        return model.get_submodule(path)
    except AttributeError:  # missing, or set to None (e.g. OPT's project_in when the widths match)
        return None


def spec_for(model: nn.Module) -> ArchSpec:
    """The spec of `model`, after checking the options the mapping relies on."""
    name = type(model).__name__
    spec = REGISTRY.get(name)
    if spec is None:
        raise UnsupportedArchitectureError(
            f"{name} is not supported; supported architectures: {', '.join(supported())}")
    config = model.config
    for attr, want in spec.requires:
        if getattr(config, attr, want) != want:
            raise UnsupportedArchitectureError(f"{name} with {attr}={getattr(config, attr)!r} is not supported "
                                               f"(rotate-and-slice needs {attr}={want!r})")
    for path in spec.absent:
        if _optional_submodule(model, path) is not None:
            raise UnsupportedArchitectureError(f"{name} with a `{path}` module is not supported")
    return spec


def spec_for_config(config) -> ArchSpec:
    """The spec for a transformers config (its `architectures`, else its model_type's causal-LM class)."""
    names = list(getattr(config, "architectures", None) or [])
    if not names:
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
        mapped = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(getattr(config, "model_type", ""))
        names = [mapped] if mapped else []
    dynslice_meta = getattr(config, "dynslice", None)
    if isinstance(dynslice_meta, dict) and "base_class" in dynslice_meta:
        names = [dynslice_meta["base_class"]]
    for name in names:
        if name in REGISTRY:
            return REGISTRY[name]
    raise UnsupportedArchitectureError(
        f"{names[0] if names else getattr(config, 'model_type', '?')} is not supported; "
        f"supported architectures: {', '.join(supported())}")
