"""The sliced-model format: a transformers folder that loads with plain `from_pretrained`.

    config.json                 the base config + `dynslice` (plan, architecture paths) + `auto_map`
    model.safetensors           (or model-0000x-of-0000y.safetensors + model.safetensors.index.json)
    modeling_dynslice.py        self-contained modeling code named by `auto_map`
    generation_config.json, tokenizer files
No pickle anywhere: weights are safetensors, metadata JSON.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import fsspec
import torch
import transformers
from safetensors import SafetensorError
from huggingface_hub import save_torch_state_dict
from torch import nn

from dynslice.errors import DynsliceError, SourceError, first_line
from dynslice.sliced import modeling_dynslice
from dynslice import atomic
from dynslice.locations import is_uri, local_path
from dynslice.sliced.modeling_dynslice import READABLE_FORMATS, sliced_class, sliced_meta

log = logging.getLogger(__name__)

ENTRY = "DynsliceForCausalLM"


def _write_local(model: nn.Module, folder: Path, tokenizer, max_shard_size: str) -> None:
    meta = sliced_meta(model.config)
    if meta is None:
        raise DynsliceError("save_sliced needs a sliced model (slice_model), one that lost sublayers (prune) or one "
                            "loaded by load_sliced; save a dense or layer-removed model with save_model")
    folder.mkdir(parents=True, exist_ok=True)
    config = model.config.to_dict()
    config.update(architectures=[ENTRY], auto_map={"AutoModelForCausalLM": f"modeling_dynslice.{ENTRY}"},
                  dtype=str(next(model.parameters()).dtype).removeprefix("torch."))
    state = model.state_dict()
    if meta.get("rotated", True):
        # transformers must not tie the sliced head (other shapes) to the embedding; a head that stays tied
        # shares its table through the model's modules (`dynslice.tied_head`)
        config["tie_word_embeddings"] = False
    elif config.get("tie_word_embeddings") and _tied(model, meta["arch"]):
        # pruned: transformers ties the head again on loading (the config says so); store the table once
        state.pop(f"{meta['arch']['head']}.weight")
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    state = {k: v.detach().contiguous() for k, v in state.items()}
    save_torch_state_dict(state, folder, max_shard_size=max_shard_size, metadata={"format": "pt"})
    shutil.copyfile(modeling_dynslice.__file__, folder / "modeling_dynslice.py")
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)


def _tied(model: nn.Module, arch: dict) -> bool:
    return model.get_submodule(arch["head"]).weight is model.get_submodule(arch["embeddings"][0]).weight


def save_sliced(model: nn.Module, path: str | os.PathLike, tokenizer=None, *, max_shard_size: str = "5GB") -> str:
    """Write a sliced (or pruned: `dynslice.removal.prune`) model to a folder or fsspec URI; returns the path."""
    return write_model_folder(path, lambda folder: _write_local(model, folder, tokenizer, max_shard_size))


def save_model(model: nn.Module, path: str | os.PathLike, tokenizer=None) -> str:
    """Write any model dynslice makes: sliced or pruned ones in the dynslice format (`save_sliced`), a model with
    whole layers removed as the plain transformers folder it is; returns the path written."""
    if sliced_meta(model.config) is not None:
        return save_sliced(model, path, tokenizer)

    def write(folder: Path) -> None:
        model.save_pretrained(folder)
        if tokenizer is not None:
            tokenizer.save_pretrained(folder)

    return write_model_folder(path, write)


def write_model_folder(path: str | os.PathLike, write) -> str:
    """Call write(folder) on a fresh local folder, then put what it wrote at `path` (a folder or fsspec URI) all
    at once locally, config.json last remotely; returns the path written."""
    path = str(path)
    if not is_uri(path):  # built next to the target, then put in its place at once: never half a model there
        target = local_path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic.recover(target)
        staging = atomic.staging_for(target)
        try:
            staging.mkdir()
            write(staging)
            atomic.replace_folder(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return path
    with tempfile.TemporaryDirectory(prefix="dynslice-save-") as tmp:
        write(Path(tmp))
        fs, root = fsspec.core.url_to_fs(path)
        fs.makedirs(root, exist_ok=True)
        # config.json last: a reader recognises a model by it, so an interrupted upload is not one
        for file in sorted(Path(tmp).iterdir(), key=lambda f: (f.name == "config.json", f.name)):
            fs.put_file(str(file), f"{root.rstrip('/')}/{file.name}")
    return path


def _local_copy(uri: str) -> str:
    fs, root = fsspec.core.url_to_fs(uri)
    target = Path(tempfile.mkdtemp(prefix="dynslice-load-"))
    for remote in fs.ls(root, detail=False):
        fs.get_file(remote, str(target / Path(remote).name))
    return str(target)


def load_sliced(path: str | os.PathLike, device: str | torch.device | None = None,
                dtype: torch.dtype | str | None = None, **from_pretrained_kwargs) -> nn.Module:
    """Load a folder (or fsspec URI) written by save_sliced, without trust_remote_code.

    Extra keyword arguments (e.g. attn_implementation) go to transformers' from_pretrained.
    """
    path = str(path)
    if is_uri(path):
        local = _local_copy(path)
        try:
            return load_sliced(local, device, dtype, **from_pretrained_kwargs)
        finally:
            shutil.rmtree(local, ignore_errors=True)  # the weights are in memory now
    path = path.removeprefix("file://")
    try:
        config = transformers.AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as exc:  # no or unreadable config.json
        raise SourceError(f"cannot read {path}/config.json: {type(exc).__name__}: {first_line(exc)}") from None
    meta = sliced_meta(config)
    if meta is None:
        raise DynsliceError(f"{path} is not a dynslice sliced model (config.json has no `dynslice` entry of "
                            f"format {' or '.join(map(str, READABLE_FORMATS))})")
    kwargs = dict(from_pretrained_kwargs, **({"dtype": dtype} if dtype is not None else {}))
    try:
        model = sliced_class(meta["base_class"]).from_pretrained(path, config=config, **kwargs)
    except (OSError, ValueError, SafetensorError) as exc:  # truncated or foreign weight files
        raise SourceError(f"cannot load the sliced model in {path}: {type(exc).__name__}: {first_line(exc)}. "
                          f"Save it again with save_sliced (or `dynslice slice --out`)") from None
    if device is not None:
        model.to(device)
    return model.eval()
