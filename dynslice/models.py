"""One model resolver: a hub id (+ revision), a local transformers folder, a local .gguf file, an fsspec URI
of a folder (copied to the local cache first), a dynslice sliced-model folder, or a demo asset name.

Every load returns the model, its tokenizer and a ModelIdentity: the value cache keys use (hub id + resolved
revision, or a sha256 over the weight files and config, so the same bytes have one identity wherever they
live).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import fsspec
import torch
import transformers

from dynslice.cache import cache_root, sha256_bytes, sha256_file, sha256_tree
from dynslice.errors import SourceError

log = logging.getLogger(__name__)

# demo model names -> folder under the cache root, written by `dynslice assets fetch`
DEMO_MODELS = {"smollm2-135m": "models/smollm2-135m-instruct"}

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "vocab.txt",
                   "spiece.model")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
           "float64": torch.float64}


@dataclass(frozen=True)
class ModelIdentity:
    kind: str  # hub | folder | sliced | gguf | uri | demo
    source: str  # what the user named (shown to people, not part of the key)
    revision: str | None = None  # hub: the resolved commit
    sha256: str | None = None  # local bytes: one hash over the weight files and config.json

    @property
    def key(self) -> str:
        """What cache keys use: the same weights give the same key, whatever path they were loaded from."""
        return f"hub:{self.source}@{self.revision}" if self.sha256 is None else f"sha256:{self.sha256}"

    def to_dict(self) -> dict[str, Any]:
        return dict(asdict(self), key=self.key)


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
    if dtype not in _DTYPES:
        raise SourceError(f"unknown dtype {dtype!r}: use one of {', '.join(_DTYPES)} or auto")
    return _DTYPES[dtype]


def is_uri(source: str) -> bool:
    return "://" in source and not source.startswith("file://")


def classify_source(source: str) -> str:
    """demo | uri | gguf | sliced | folder | hub — decided from the name and the local file system only."""
    source = str(source)
    if source in DEMO_MODELS:
        return "demo"
    if is_uri(source):
        return "uri"
    path = Path(source.removeprefix("file://")).expanduser()
    if path.is_file():
        if path.suffix == ".gguf":
            return "gguf"
        raise SourceError(f"{path} is a file but not a .gguf: pass a transformers folder (with config.json), "
                          f"a .gguf file, an fsspec URI or a hub id")
    if path.is_dir():
        config = path / "config.json"
        if not config.is_file():
            raise SourceError(f"{path} has no config.json: point --model at the folder written by "
                              f"save_pretrained (or at a .gguf file inside it)")
        return "sliced" if "dynslice" in json.loads(config.read_text()) else "folder"
    if source.endswith(".gguf") or source.startswith((".", "/", "~")) or not _HUB_ID.match(source):
        raise SourceError(f"no such file or folder: {source} (a hub id looks like `org/name`; demo models: "
                          f"{', '.join(DEMO_MODELS)} after `dynslice assets fetch`)")
    return "hub"


def folder_sha256(folder: str | os.PathLike) -> str:
    """sha256 over the weight files and config.json of a local folder (relative names + file hashes)."""
    folder = Path(folder)
    files = {p.relative_to(folder).as_posix(): sha256_file(p) for p in sorted(folder.rglob("*"))
             if p.is_file() and (p.suffix in WEIGHT_SUFFIXES or p.name == "config.json")}
    if not any(name.endswith(WEIGHT_SUFFIXES) for name in files):
        raise SourceError(f"{folder} holds no weight file ({', '.join(WEIGHT_SUFFIXES)})")
    return sha256_tree(files)


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


def _version(info: dict) -> list:
    """What tells a changed remote file: size plus the store's ETag (S3, GCS) or modification time."""
    stamp = info.get("ETag") or info.get("etag") or info.get("mtime") or info.get("LastModified")
    return [int(info.get("size") or 0), str(stamp) if stamp is not None else None]


def _remote_listing(uri: str) -> tuple[Any, str, dict[str, list]]:
    fs, root = fsspec.core.url_to_fs(uri)
    root = root.rstrip("/")
    try:
        found = fs.find(root, detail=True)
    except (OSError, ValueError) as exc:
        raise SourceError(f"cannot list {uri}: {exc}") from exc
    files = {name[len(root):].lstrip("/"): _version(info) for name, info in found.items()
             if info.get("type", "file") == "file"}
    if not files:
        raise SourceError(f"{uri} is empty or does not exist: upload the model folder there first "
                          f"(e.g. save_sliced(model, {uri!r}) or `aws s3 cp --recursive`)")
    return fs, root, files


def fetch_uri(uri: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Copy a model folder (or a single .gguf) from an fsspec URI into the cache once; returns the local path.

    The local copy is named by the URI and reused while the remote listing (names, sizes, ETags) is unchanged.
    """
    fs, root, files = _remote_listing(uri)
    single = list(files) == [""]  # the URI names one file
    listing = {Path(root).name if single else k: v for k, v in files.items()}
    target = Path(cache_dir or cache_root()) / "remote" / sha256_bytes(uri.encode())[:24]
    stamp = target / ".dynslice-listing.json"
    if stamp.is_file() and json.loads(stamp.read_text()) == listing:
        log.info("using cached copy of %s at %s", uri, target)
    else:
        if target.exists():
            shutil.rmtree(target)
        partial = target.with_name(target.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        for rel in listing:
            local = partial / rel
            local.parent.mkdir(parents=True, exist_ok=True)
            fs.get_file(root if single else f"{root}/{rel}", str(local))
        (partial / stamp.name).write_text(json.dumps(listing, sort_keys=True))
        partial.rename(target)
        log.info("copied %s (%d files) to %s", uri, len(listing), target)
    return target / next(iter(listing)) if single else target


def _hub_revision(repo_id: str, revision: str | None) -> str:
    """The commit a hub id + revision resolves to (from the local hub cache when offline)."""
    try:
        config = transformers.utils.cached_file(repo_id, "config.json", revision=revision)
    except OSError as exc:
        raise SourceError(f"cannot resolve hub model {repo_id}@{revision or 'main'}: {exc}. Offline machines "
                          f"need it in the local hub cache, or pass a local folder, a .gguf file or an fsspec "
                          f"URI") from exc
    parent = Path(config).parent
    return parent.name if parent.parent.name == "snapshots" else (revision or "main")


def _load_dense(folder: str, dtype, revision: str | None = None, **kwargs) -> transformers.PreTrainedModel:
    if revision is not None:
        kwargs["revision"] = revision
    try:
        return transformers.AutoModelForCausalLM.from_pretrained(
            folder, dtype=dtype if dtype is not None else "auto", **kwargs).eval()
    except (OSError, ValueError) as exc:
        raise SourceError(f"cannot load a causal LM from {folder}: {exc}") from exc


def _load_local(path: Path, dtype, **kwargs) -> tuple[Any, str]:
    """Load a local folder or .gguf; returns (model, kind)."""
    kind = classify_source(str(path))
    if kind == "gguf":
        return load_gguf(path, dtype), kind
    if kind == "sliced":
        from dynslice.sliced.format import load_sliced

        return load_sliced(path, dtype=dtype, **kwargs), kind
    return _load_dense(str(path), dtype, **kwargs), kind


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
    kind = classify_source(source)
    if kind == "hub":
        commit = _hub_revision(source, revision)
        model = _load_dense(source, dtype, revision=commit, **from_pretrained_kwargs)
        identity = ModelIdentity("hub", source, revision=commit)
        tok_source, tok_revision = source, commit
    else:
        if kind == "demo":
            local = Path(cache_dir or cache_root()) / DEMO_MODELS[source]
            if not (local / "config.json").is_file():
                raise SourceError(f"demo model {source} is not in {local.parent}: run `dynslice assets fetch` "
                                  f"first (set DYNSLICE_CACHE to use another cache folder)")
        elif kind == "uri":
            local = fetch_uri(source, cache_dir)
        else:
            local = Path(source.removeprefix("file://")).expanduser()
        model, local_kind = _load_local(local, dtype, **from_pretrained_kwargs)
        digest = sha256_file(local) if local.is_file() else folder_sha256(local)
        identity = ModelIdentity(kind if kind in ("uri", "demo") else local_kind, source, sha256=digest)
        tok_source, tok_revision = str(local), None
    if tokenizer is None:
        tokenizer = load_tokenizer(tok_source, revision=tok_revision)
    elif isinstance(tokenizer, (str, os.PathLike)):
        tokenizer = load_tokenizer(tokenizer)
    if device is not None:
        model.to(device)
    log.info("loaded %s (%s, %s)", source, type(model).__name__, identity.key[:23])
    return LoadedModel(model, tokenizer, identity)
