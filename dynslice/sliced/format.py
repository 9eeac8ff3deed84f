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
from huggingface_hub import save_torch_state_dict
from torch import nn

from dynslice.errors import DynsliceError
from dynslice.sliced import modeling_dynslice
from dynslice.locations import is_uri
from dynslice.sliced.modeling_dynslice import READABLE_FORMATS, sliced_class, sliced_meta

log = logging.getLogger(__name__)

ENTRY = "DynsliceForCausalLM"


def _write_local(model: nn.Module, folder: Path, tokenizer, max_shard_size: str) -> None:
    if sliced_meta(model.config) is None:
        raise DynsliceError("save_sliced needs a model returned by slice_model (or load_sliced)")
    folder.mkdir(parents=True, exist_ok=True)
    config = model.config.to_dict()
    # tie_word_embeddings=False: transformers must not tie the sliced head (other shapes) to the embedding; a
    # head that stays tied shares its table through the model's modules (`dynslice.tied_head`)
    config.update(architectures=[ENTRY], auto_map={"AutoModelForCausalLM": f"modeling_dynslice.{ENTRY}"},
                  tie_word_embeddings=False, dtype=str(next(model.parameters()).dtype).removeprefix("torch."))
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_torch_state_dict(state, folder, max_shard_size=max_shard_size, metadata={"format": "pt"})
    shutil.copyfile(modeling_dynslice.__file__, folder / "modeling_dynslice.py")
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)


def save_sliced(model: nn.Module, path: str | os.PathLike, tokenizer=None, *, max_shard_size: str = "5GB") -> str:
    """Write a sliced model to a folder or fsspec URI; returns the path written."""
    path = str(path)
    if not is_uri(path):
        _write_local(model, Path(path.removeprefix("file://")), tokenizer, max_shard_size)
        return path
    with tempfile.TemporaryDirectory(prefix="dynslice-save-") as tmp:
        _write_local(model, Path(tmp), tokenizer, max_shard_size)
        fs, root = fsspec.core.url_to_fs(path)
        fs.makedirs(root, exist_ok=True)
        for file in sorted(Path(tmp).iterdir()):
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
    config = transformers.AutoConfig.from_pretrained(path)
    meta = sliced_meta(config)
    if meta is None:
        raise DynsliceError(f"{path} is not a dynslice sliced model (config.json has no `dynslice` entry of "
                            f"format {' or '.join(map(str, READABLE_FORMATS))})")
    kwargs = dict(from_pretrained_kwargs, **({"dtype": dtype} if dtype is not None else {}))
    model = sliced_class(meta["base_class"]).from_pretrained(path, config=config, **kwargs)
    if device is not None:
        model.to(device)
    return model.eval()
