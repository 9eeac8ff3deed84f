"""One model resolver: a hub id (+ revision), a local transformers folder, a local .gguf file, an fsspec URI
of a folder (copied to the local cache first), a dynslice sliced-model folder, or a demo asset name.

Every load returns the model, its tokenizer and its `ModelIdentity` (dynslice.identity: what cache keys use).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import transformers
from safetensors import SafetensorError

from dynslice.errors import SourceError, first_line
from dynslice.identity import ModelIdentity, identify_model
from dynslice.locations import local_path
from dynslice.sources import classify_source, demo_folder, fetch_uri

log = logging.getLogger(__name__)

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "vocab.txt",
                   "spiece.model")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
          "float64": torch.float64}


@dataclass
class LoadedModel:
    model: transformers.PreTrainedModel
    tokenizer: Any
    identity: ModelIdentity


def parse_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return None
    if dtype not in DTYPES:
        raise SourceError(f"unknown dtype {dtype!r}: use one of {', '.join(DTYPES)} or auto")
    return DTYPES[dtype]


def _has_tokenizer(folder: Path) -> bool:
    return any((folder / name).is_file() for name in TOKENIZER_FILES)


def load_tokenizer(source: str | os.PathLike, *, gguf_file: str | None = None, revision: str | None = None):
    """AutoTokenizer from a folder, a hub id or a .gguf file, with an error that says how to supply one."""
    source = str(source)
    path = Path(source).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        source, gguf_file = str(path.parent), path.name
    elif path.is_dir() and gguf_file is None and not _has_tokenizer(path):
        raise SourceError(f"no tokenizer in {path} (none of {', '.join(TOKENIZER_FILES)}): save it next to the "
                          f"weights with tokenizer.save_pretrained({str(path)!r}) or pass --tokenizer "
                          f"PATH_OR_HUB_ID")
    try:
        kwargs = {"gguf_file": gguf_file} if gguf_file else {}
        if revision:
            kwargs["revision"] = revision
        return transformers.AutoTokenizer.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as exc:
        raise SourceError(f"cannot load a tokenizer from {source}: {exc}. Pass --tokenizer PATH_OR_HUB_ID") from exc


def load_gguf(path: str | os.PathLike, dtype: torch.dtype | None = None) -> transformers.PreTrainedModel:
    """A .gguf file as a plain dense transformers model (weights dequantized, no GGUF quantizer attached)."""
    path = Path(path)
    config = transformers.GgufConfig(dequantize=True)
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(
            str(path.parent), gguf_file=path.name, quantization_config=config, dtype=dtype or torch.float32)
    except (OSError, ValueError, ImportError) as exc:
        raise SourceError(f"cannot load GGUF {path}: {exc} (needs the `gguf` package and an architecture "
                          f"transformers can read from GGUF)") from exc
    packed = sorted({type(m).__name__ for m in model.modules() if type(m).__name__.lower().startswith("gguf")})
    if packed:
        raise SourceError(f"GGUF {path} kept packed modules {packed}; dynslice needs dense weights")
    # every weight is a plain tensor now: forget the quantizer so the model saves and slices like any other
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    for attr in ("is_quantized", "quantization_method"):
        if attr in model.__dict__:
            delattr(model, attr)
    return model.eval()


def _load_dense(folder: str, dtype, revision: str | None = None, **kwargs) -> transformers.PreTrainedModel:
    if revision is not None:
        kwargs["revision"] = revision
    try:
        return transformers.AutoModelForCausalLM.from_pretrained(
            folder, dtype=dtype if dtype is not None else "auto", **kwargs).eval()
    except (OSError, ValueError, SafetensorError) as exc:  # missing, truncated or foreign weight files
        raise SourceError(f"cannot load a causal LM from {folder}: {type(exc).__name__}: {first_line(exc)}. "
                          f"Check the folder's weight files (re-save with save_pretrained)") from None


def _load_local(path: Path, dtype, **kwargs) -> transformers.PreTrainedModel:
    """Load a local folder (dense or sliced) or .gguf file."""
    kind = classify_source(str(path))
    if kind == "gguf":
        return load_gguf(path, dtype)
    if kind == "sliced":
        from dynslice.sliced.format import load_sliced

        return load_sliced(path, dtype=dtype, **kwargs)
    return _load_dense(str(path), dtype, **kwargs)


def local_source(source: str, identity: ModelIdentity, cache_dir: str | os.PathLike | None = None) -> Path:
    """The local file or folder to load a non-hub source from (a URI is copied into the cache first)."""
    if identity.kind == "demo":
        return demo_folder(source, cache_dir)
    if identity.kind == "uri":
        return fetch_uri(source, cache_dir)
    return local_path(source)


def tokenizer_of(source: str | os.PathLike, revision: str | None = None,
                 cache_dir: str | os.PathLike | None = None):
    """The tokenizer of a model source, without loading (or hashing) the model's weights."""
    source = str(source)
    kind = classify_source(source)
    if kind == "hub":
        return load_tokenizer(source, revision=revision)
    if kind == "demo":
        return load_tokenizer(demo_folder(source, cache_dir))
    return load_tokenizer(fetch_uri(source, cache_dir) if kind == "uri" else local_path(source))


def resolve_model(source: str | os.PathLike, *, revision: str | None = None, tokenizer=None,
                  device: str | torch.device | None = None, dtype: torch.dtype | str | None = None,
                  cache_dir: str | os.PathLike | None = None, **from_pretrained_kwargs) -> LoadedModel:
    """Load a causal LM and its tokenizer from any supported source.

    tokenizer: None (the model's own), a path / hub id / .gguf, or an already built tokenizer.
    dtype: a torch dtype or its name; None keeps the checkpoint's (float32 for GGUF).
    Extra keyword arguments go to transformers' from_pretrained (e.g. attn_implementation).
    """
    source = str(source)
    dtype = parse_dtype(dtype)
    identity = identify_model(source, revision, cache_dir)
    if identity.kind == "hub":
        model = _load_dense(source, dtype, revision=identity.revision, **from_pretrained_kwargs)
        tok_source, tok_revision = source, identity.revision
    else:
        local = local_source(source, identity, cache_dir)
        model = _load_local(local, dtype, **from_pretrained_kwargs)
        tok_source, tok_revision = str(local), None
    if tokenizer is None:
        tokenizer = load_tokenizer(tok_source, revision=tok_revision)
    elif isinstance(tokenizer, (str, os.PathLike)):
        tokenizer = load_tokenizer(tokenizer)
    if device is not None:
        model.to(device)
    log.info("loaded %s (%s, %s)", source, type(model).__name__, identity.key[:23])
    return LoadedModel(model, tokenizer, identity)
