"""Modeling code of a dynslice-sliced model: self-contained (torch + transformers only).

`save_sliced` copies this file next to the weights and registers `DynsliceForCausalLM` through
`auto_map`, so `AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)` loads a sliced model
on a machine without dynslice. The dynslice engine imports the same classes, so the in-memory sliced
model and the reloaded one are built by one piece of code.

A sliced model is its base transformers model with three changes, all described by `config.dynslice`:
- every norm is a scale-free RMSNorm over the ORIGINAL hidden size (scales were folded into linears);
- the linears that read or write the residual stream are narrower (per-layer widths of the plan);
- each decoder layer is a block whose residual path carries a change of basis: x @ S instead of x;
- (`tied_head`, format 2) a head tied to the embedding stays tied: the head holds the one [V, D] table and
  the final norm's scale as a [D, D] matrix, and the token embedding reads the table's first d_0 columns.

A pruned model (format 3, `rotated: false`) is the base model, not rotated and not sliced, whose decoder layers
listed in `skip_attention` / `skip_mlp` lost their attention or their MLP (and the norm feeding it): the `greedy`
planner's sublayer removal. Its norms, embedding and head are the base model's, and a tied head stays tied the
transformers way. A config records the lowest format that reads it: sliced models stay format 2.
"""

from __future__ import annotations

import torch
import transformers
from torch import nn
from torch.nn import functional as F

FORMAT_VERSION = 2  # 2: `tied_head` (a format-1 config is read as an untied one)
PRUNED_FORMAT = 3  # 3: `rotated: false` with `skip_attention` / `skip_mlp`
READABLE_FORMATS = (1, 2, 3)


class RMSN(nn.Module):
    """Scale-free RMSNorm whose mean runs over the original width, so it stays right on a sliced stream."""

    def __init__(self, full_width: int, eps: float):
        super().__init__()
        self.full_width = full_width
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # half precision squares overflow: compute in float32 (float64 stays float64)
        xf = x if x.dtype == torch.float64 else x.float()
        scale = torch.rsqrt(xf.pow(2).sum(-1, keepdim=True) / self.full_width + self.eps)
        return (xf * scale).to(x.dtype)


def _residual(x: torch.Tensor, shortcut: torch.Tensor | None) -> torch.Tensor:
    return x if shortcut is None else x @ shortcut


class _Block(nn.Module):
    """Takes over a decoder layer's attention, MLP and norms under their own names (state-dict keys stay)."""

    def __init__(self, layer: nn.Module, arch: dict):
        super().__init__()
        self._attn, self._attn_norm = arch["attn"], arch["attn_norm"]
        self._mlp, self._mlp_norm = tuple(arch["mlp"]), arch["mlp_norm"]
        for name in (self._attn_norm, self._attn, self._mlp_norm, *self._mlp):
            if name is not None:
                self.add_module(name, getattr(layer, name))
        self.layer_idx = getattr(getattr(layer, self._attn), "layer_idx", None)

    def norm_attn(self, x: torch.Tensor) -> torch.Tensor:
        return getattr(self, self._attn_norm)(x)

    def norm_mlp(self, x: torch.Tensor) -> torch.Tensor:
        return getattr(self, self._mlp_norm)(x)

    def attend(self, normed: torch.Tensor, **kwargs) -> torch.Tensor:
        # the library's own attention module, with the keyword arguments the model gave the layer
        return getattr(self, self._attn)(hidden_states=normed, **kwargs)[0]

    def feed_forward(self, normed: torch.Tensor) -> torch.Tensor:
        for name in self._mlp:
            normed = getattr(self, name)(normed)
        return normed


class SequentialBlock(_Block):
    """h = x S_a + attn(n1(x)); y = h S_m + mlp(n2(h)). S_a: [d_in, d_mid], S_m: [d_mid, d_out]."""

    def __init__(self, layer: nn.Module, arch: dict):
        super().__init__(layer, arch)
        self.register_parameter("attn_shortcut", None)
        self.register_parameter("mlp_shortcut", None)

    def forward(self, hidden_states: torch.Tensor, **kwargs) -> torch.Tensor:
        h = _residual(hidden_states, self.attn_shortcut) + self.attend(self.norm_attn(hidden_states), **kwargs)
        return _residual(h, self.mlp_shortcut) + self.feed_forward(self.norm_mlp(h))


class ParallelBlock(_Block):
    """y = x S + attn(n(x)) + mlp(n(x)). S: [d_in, d_out]."""

    def __init__(self, layer: nn.Module, arch: dict):
        super().__init__(layer, arch)
        self.register_parameter("shortcut", None)

    def forward(self, hidden_states: torch.Tensor, **kwargs) -> torch.Tensor:
        normed = self.norm_attn(hidden_states)
        return (_residual(hidden_states, self.shortcut) + self.attend(normed, **kwargs)
                + self.feed_forward(normed))


BLOCKS = {"sequential": SequentialBlock, "parallel": ParallelBlock}


class TiedHead(nn.Linear):
    """The head of a tied model: logits = (x @ M) W^T (+ b).

    W [V, D] is the embedding table in the basis Q_0 the last layer writes (E Q_0); the token embedding reads
    its first d_0 columns (SharedEmbedding), so the table is stored once. M [D, D] = Q_0^T diag(g) Q_0 is the
    final norm's scale g seen in that basis (a norm scale cannot fold into a weight shared with the embedding).
    """

    def __init__(self, linear: nn.Linear):
        nn.Module.__init__(self)  # takes over the linear's weight and bias; only M is new (empty until loaded)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_parameter("weight", linear.weight)  # [V, D]
        self.register_parameter("bias", linear.bias)  # [V] or None
        self.norm_scale = _param(linear.weight, linear.in_features, linear.in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x @ self.norm_scale, self.weight, self.bias)  # [..., D] -> [..., V]


class SharedEmbedding(nn.Module):
    """Token embedding that reads the first `embedding_dim` columns of a TiedHead's weight: no table of its own."""

    def __init__(self, embedding: nn.Embedding, head: TiedHead, width: int):
        super().__init__()
        self.num_embeddings, self.embedding_dim = embedding.num_embeddings, width
        self.padding_idx = getattr(embedding, "padding_idx", None)
        # a tuple keeps the head out of this module's children: it is registered (and saved) once, as the head
        self._head = (head,)

    @property
    def weight(self) -> torch.Tensor:
        return self._head[0].weight[:, : self.embedding_dim]  # [V, d_0], a view of the head's [V, D]

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        weight = self.weight
        # the ids go where the table is (device_map may have put the head elsewhere): [B, T] -> [B, T, d_0]
        return F.embedding(input_ids.to(weight.device), weight, self.padding_idx)


def _norm_eps(norm: nn.Module) -> float:
    for attr in ("variance_epsilon", "eps"):
        if hasattr(norm, attr):
            return float(getattr(norm, attr))
    raise AttributeError(f"cannot find the epsilon of {type(norm).__name__}")


def _to_rmsn(root: nn.Module, path: str, full_width: int) -> None:
    norm = root.get_submodule(path)
    if not isinstance(norm, RMSN):
        root.set_submodule(path, RMSN(full_width, _norm_eps(norm)))


def replace_final_norm(model: nn.Module, arch: dict, full_width: int) -> None:
    """Swap the final norm for RMSN (its scale folded into the head, or kept by a tied head)."""
    _to_rmsn(model, arch["final_norm"], full_width)


def wrap_layer(model: nn.Module, arch: dict, index: int, full_width: int) -> nn.Module:
    """Decoder layer `index` as the shortcut-carrying block of its topology, its norms scale-free RMSN (the caller
    has folded their scales or will load the block's weights); set in the model and returned."""
    layers = model.get_submodule(arch["layers"])
    layer = layers[index]
    if not isinstance(layer, _Block):
        for name in (arch["attn_norm"], arch["mlp_norm"]):
            if name:
                _to_rmsn(layer, name, full_width)
        layers[index] = BLOCKS[arch["topology"]](layer, arch)
    return layers[index]


def replace_norms(model: nn.Module, arch: dict, full_width: int) -> None:
    """Swap every norm for RMSN and wrap every layer in its block (no weights: folded or loaded elsewhere)."""
    replace_final_norm(model, arch, full_width)
    for i in range(len(model.get_submodule(arch["layers"]))):
        wrap_layer(model, arch, i, full_width)


def _param(like: torch.Tensor, *shape: int) -> nn.Parameter:
    return nn.Parameter(torch.empty(*shape, dtype=like.dtype, device=like.device), requires_grad=False)


def reads_norm_with_bias(arch: dict) -> bool:
    """LayerNorm biases fold into the linears that read a norm, so those linears always carry a bias."""
    return arch["norm"] == "layer"


def reshape_linear(linear: nn.Linear, in_features: int | None = None, out_features: int | None = None,
                   bias: bool = False) -> None:
    """Give `linear` empty parameters of a new shape (filled later by a state dict)."""
    in_features = linear.in_features if in_features is None else in_features
    out_features = linear.out_features if out_features is None else out_features
    linear.weight = _param(linear.weight, out_features, in_features)
    if bias or linear.bias is not None:
        linear.bias = _param(linear.weight, out_features)
    linear.in_features, linear.out_features = in_features, out_features


def transformers_tying_off(model: nn.Module) -> None:
    """transformers must never tie (or re-tie) the sliced head to the embedding: their shapes differ, and a tied
    sliced head shares its table through the module structure (TiedHead, SharedEmbedding) instead."""
    model.config.tie_word_embeddings = False
    getattr(model.config, "get_text_config", lambda: model.config)().tie_word_embeddings = False
    if hasattr(model, "all_tied_weights_keys"):
        model.all_tied_weights_keys = {}  # the mapping transformers recorded when the dense model was built


def tie_head_modules(model: nn.Module, arch: dict, d_first: int) -> TiedHead:
    """The head becomes a TiedHead (its weight kept, M added empty) and the token embedding (the first of
    `embeddings`) a SharedEmbedding reading its first `d_first` columns. Returns the head."""
    head = TiedHead(model.get_submodule(arch["head"]))
    model.set_submodule(arch["head"], head)
    token = arch["embeddings"][0]
    model.set_submodule(token, SharedEmbedding(model.get_submodule(token), head, d_first))
    return head


def structure_ends(model: nn.Module, arch: dict, d_first: int, d_last: int, tied: bool = False) -> None:
    """Embeddings write `d_first` columns; the head reads `d_last` (tied: the head holds the token table)."""
    untied = arch["embeddings"][1:] if tied else arch["embeddings"]
    for path in untied:
        emb = model.get_submodule(path)
        emb.weight = _param(emb.weight, emb.num_embeddings, d_first)
        emb.embedding_dim = d_first
    reshape_linear(model.get_submodule(arch["head"]), in_features=d_last, bias=reads_norm_with_bias(arch))
    if tied:
        tie_head_modules(model, arch, d_first)


def structure_block(block: _Block, arch: dict, d_in: int, d_mid: int, d_out: int) -> None:
    """Give one (already wrapped) block the sliced shapes: reads d_in, attention writes d_mid, MLP d_out."""
    biased, parallel = reads_norm_with_bias(arch), arch["topology"] == "parallel"
    for path in arch["attn_inputs"]:
        reshape_linear(block.get_submodule(path), in_features=d_in, bias=biased)
    reshape_linear(block.get_submodule(arch["attn_output"]), out_features=d_out if parallel else d_mid)
    for path in arch["mlp_inputs"]:
        reshape_linear(block.get_submodule(path), in_features=d_in if parallel else d_mid, bias=biased)
    reshape_linear(block.get_submodule(arch["mlp_output"]), out_features=d_out)
    like = block.get_submodule(arch["mlp_output"]).weight
    if parallel:
        block.shortcut = _param(like, d_in, d_out)
    else:
        block.attn_shortcut = _param(like, d_in, d_mid)
        block.mlp_shortcut = _param(like, d_mid, d_out)


class NoAttention(nn.Module):
    """Stands in for a skipped attention module: adds nothing to the stream, keeps no KV cache; returns
    (output, weights) like an attention module."""

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs):
        return torch.zeros_like(hidden_states), None


class NoMLP(nn.Module):
    """Stands in for a skipped MLP: adds nothing to the stream."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x)


def skip_problem(arch: dict, num_layers: int, attention, mlp, layer_types=None) -> str | None:
    """Why a model of `num_layers` layers cannot skip these sublayers, or None."""
    if (attention or mlp) and arch["topology"] != "sequential":
        return "only sequential blocks can skip a sublayer (a parallel block's two read one norm)"
    if any(not 0 <= i < num_layers for i in [*attention, *mlp]) or set(attention) & set(mlp):
        return (f"cannot skip attention {sorted(attention)} and MLP {sorted(mlp)} of a model with {num_layers} "
                "layers (each layer keeps at least one of the two)")
    if attention and len(set(layer_types or ["one"])) > 1:
        return ("skipping attention renumbers the KV cache, which needs one attention type per layer; this model "
                f"mixes {sorted(set(layer_types))}")
    return None


def skip_sublayers(model: nn.Module, arch: dict, attention=(), mlp=()) -> None:
    """Decoder layers `attention` lose their attention and layers `mlp` their MLP, each with the norm feeding it
    (sequential blocks only; indices of this model's layers). Parameter-free stand-ins add zero, so the model keeps
    its class. The attention modules left are renumbered 0, 1, ... so the KV cache's first layers are theirs:
    the cache reads its sequence length from layer 0, which a skipped attention would never fill."""
    layers = model.get_submodule(arch["layers"])
    attention, mlp = sorted(set(attention)), sorted(set(mlp))
    problem = skip_problem(arch, len(layers), attention, mlp, getattr(model.config, "layer_types", None))
    if problem:
        raise ValueError(problem)
    for i in attention:
        layers[i].set_submodule(arch["attn"], NoAttention())
        layers[i].set_submodule(arch["attn_norm"], nn.Identity())
    for i in mlp:
        for name in arch["mlp"]:
            layers[i].set_submodule(name, NoMLP() if name == arch["mlp"][0] else nn.Identity())
        layers[i].set_submodule(arch["mlp_norm"], nn.Identity())
    if attention:
        kept = [layer for i, layer in enumerate(layers) if i not in set(attention)]
        for slot, layer in enumerate(kept):
            for module in layer.modules():
                if hasattr(module, "layer_idx"):
                    module.layer_idx = slot


def apply_structure(model: nn.Module, meta: dict) -> None:
    """Turn a freshly built base model into the shapes of a sliced (or pruned) one (weights left empty)."""
    arch, widths, mid = meta["arch"], meta["widths"], meta["mid"]
    if not meta.get("rotated", True):  # pruned: the base model's own modules, some sublayers skipped
        skip_sublayers(model, arch, meta.get("skip_attention", ()), meta.get("skip_mlp", ()))
        return
    replace_norms(model, arch, model.config.hidden_size)
    structure_ends(model, arch, widths[0], widths[-1], tied=bool(meta.get("tied_head", False)))
    transformers_tying_off(model)
    for i, block in enumerate(model.get_submodule(arch["layers"])):
        structure_block(block, arch, widths[i], mid[i], widths[i + 1])


_SLICED_CLASSES: dict[str, type] = {}


def sliced_class(base_name: str) -> type:
    """A subclass of the base family's *ForCausalLM whose constructor builds the sliced shapes."""
    if base_name not in _SLICED_CLASSES:
        base = getattr(transformers, base_name)

        def __init__(self, config, *args, **kwargs):
            base.__init__(self, config, *args, **kwargs)
            apply_structure(self, config.dynslice)

        _SLICED_CLASSES[base_name] = type(f"Sliced{base_name}", (base,), {
            "__init__": __init__, "__module__": __name__,
            # a block carries its shortcut: never split one across devices (device_map="auto")
            "_no_split_modules": ["SequentialBlock", "ParallelBlock"]})
    return _SLICED_CLASSES[base_name]


def sliced_meta(config) -> dict | None:
    """The `dynslice` entry of a sliced model's config if it is of this format version, else None: the one
    place that decides whether a config describes a sliced model."""
    meta = getattr(config, "dynslice", None)
    if isinstance(config, dict):
        meta = config.get("dynslice")
    return meta if isinstance(meta, dict) and meta.get("format") in READABLE_FORMATS else None


def mark_sliced(model: nn.Module, arch: dict, plan: dict, tied_head: bool = False) -> None:
    """Record in the model's config what rebuilds the sliced shapes: the base class, the module paths, the
    per-layer widths and whether the head stays tied to the embedding (plus the whole plan, for people)."""
    model.config.dynslice = {"format": FORMAT_VERSION, "base_class": type(model).__name__, "arch": arch,
                             "widths": list(plan["widths"]), "mid": list(plan["mid"]), "tied_head": tied_head,
                             "plan": plan}


def mark_pruned(model: nn.Module, arch: dict, plan: dict, attention=(), mlp=()) -> None:
    """Record in the model's config which of its layers skip their attention or MLP (see skip_sublayers), for a
    model that is neither rotated nor sliced (plus the whole plan, for people)."""
    width = model.config.hidden_size
    layers = len(model.get_submodule(arch["layers"]))
    model.config.dynslice = {"format": PRUNED_FORMAT, "base_class": type(model).__name__, "arch": arch,
                             "rotated": False, "widths": [width] * (layers + 1), "mid": [width] * layers,
                             "tied_head": False, "skip_attention": sorted(attention), "skip_mlp": sorted(mlp),
                             "plan": plan}


def _check_config(config) -> dict:
    meta = sliced_meta(config)
    if meta is None:
        raise ValueError(f"not a dynslice sliced-model config (format {' or '.join(map(str, READABLE_FORMATS))} "
                         "expected)")
    return meta


class DynsliceForCausalLM(transformers.PreTrainedModel):
    """Entry point named in `auto_map`: builds the sliced variant of the base architecture."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, config=None, **kwargs):
        if config is None:
            config = transformers.AutoConfig.from_pretrained(pretrained_model_name_or_path, **kwargs)
        target = sliced_class(_check_config(config)["base_class"])
        return target.from_pretrained(pretrained_model_name_or_path, *args, config=config, **kwargs)

    @classmethod
    def _from_config(cls, config, **kwargs):
        return sliced_class(_check_config(config)["base_class"])._from_config(config, **kwargs)
