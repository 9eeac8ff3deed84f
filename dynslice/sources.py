"""Where a model comes from, decided from its name and the local file system only: a demo asset, a local
transformers folder, a dynslice sliced folder, a .gguf file, an fsspec URI (copied into the cache), or a hub id.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path, PurePosixPath
from typing import Any

import fsspec

from dynslice.errors import SourceError
from dynslice.hashing import sha256_bytes
from dynslice.locations import cache_root, is_uri, local_path, version_stamp

log = logging.getLogger(__name__)

# demo model names -> folder under the cache root, written by `dynslice assets fetch`
DEMO_MODELS = {"smollm2-135m": "models/smollm2-135m-instruct"}
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")
_LISTING = ".dynslice-listing.json"


def classify_source(source: str | os.PathLike) -> str:
    """demo | uri | gguf | sliced | folder | hub."""
    source = str(source)
    if source in DEMO_MODELS:
        return "demo"
    if is_uri(source):
        return "uri"
    path = local_path(source)
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
        try:
            meta = json.loads(config.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise SourceError(f"{config} is not valid JSON ({type(exc).__name__} at {_where(exc)}): re-save "
                              f"the model with save_pretrained") from None
        return "sliced" if isinstance(meta, dict) and "dynslice" in meta else "folder"
    if source.endswith(".gguf") or source.startswith((".", "/", "~")) or not _HUB_ID.match(source):
        raise SourceError(f"no such file or folder: {source} (a hub id looks like `org/name`; demo models: "
                          f"{', '.join(DEMO_MODELS)} after `dynslice assets fetch`)")
    return "hub"


def _where(exc: Exception) -> str:
    return f"line {exc.lineno}" if isinstance(exc, json.JSONDecodeError) else f"byte {getattr(exc, 'start', '?')}"


def demo_folder(name: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """The local folder of a demo model; SourceError naming the fix when it was never fetched."""
    folder = Path(cache_dir or cache_root()) / DEMO_MODELS[name]
    if not (folder / "config.json").is_file():
        raise SourceError(f"demo model {name} is not in {folder.parent}: run `dynslice assets fetch` first (set "
                          f"DYNSLICE_CACHE to use another cache folder)")
    return folder


def hub_revision(repo_id: str, revision: str | None) -> str:
    """The commit a hub id + revision resolves to (from the local hub cache when offline)."""
    import transformers

    try:
        config = transformers.utils.cached_file(repo_id, "config.json", revision=revision)
    except OSError as exc:
        raise SourceError(f"cannot resolve hub model {repo_id}@{revision or 'main'}: {exc}. Offline machines "
                          f"need it in the local hub cache, or pass a local folder, a .gguf file or an fsspec "
                          f"URI") from exc
    parent = Path(config).parent
    return parent.name if parent.parent.name == "snapshots" else (revision or "main")


# -- remote folders --------------------------------------------------------------------------------------

def safe_relative(name: str, where: str) -> PurePosixPath:
    """A relative path read from a remote listing or manifest, confined to its root: no absolute path, no
    `..`, no empty or `.` component, no backslash or NUL; SourceError otherwise."""
    rel = PurePosixPath(name)
    if (not name or "\\" in name or "\0" in name or rel.is_absolute()
            or any(part in ("", ".", "..") for part in name.split("/"))):
        raise SourceError(f"{where} lists the file {name!r}, whose path leaves its folder: refusing to copy it")
    return rel


def remote_listing(uri: str, storage_options: dict | None = None) -> tuple[Any, str, dict[str, list]]:
    """(filesystem, root, {relative name: [size, version stamp]}); a single-file URI lists as {"": ...}."""
    try:
        fs, root = fsspec.core.url_to_fs(uri, **(storage_options or {}))
        found = fs.find(root.rstrip("/"), detail=True)
    except (OSError, ValueError) as exc:
        raise SourceError(f"cannot list {uri}: {type(exc).__name__}: {exc}") from None
    root = root.rstrip("/")
    files = {name[len(root):].lstrip("/"): [int(info.get("size") or 0), version_stamp(info)]
             for name, info in found.items() if info.get("type", "file") == "file"}
    if not files:
        raise SourceError(f"{uri} is empty or does not exist: upload the model folder there first "
                          f"(e.g. save_sliced(model, {uri!r}) or `aws s3 cp --recursive`)")
    for name in files:
        if name:
            safe_relative(name, uri)
    return fs, root, files


def fetch_uri(uri: str, cache_dir: str | os.PathLike | None = None,
              listing: tuple[Any, str, dict[str, list]] | None = None) -> Path:
    """Copy a model folder (or a single .gguf) from an fsspec URI into the cache once; returns the local path.

    The local copy is named by the URI and reused while the remote listing (names, sizes, ETags) is unchanged.
    Every listed name is confined to the copy's folder (a name with `..` is refused, never written)."""
    fs, root, files = listing or remote_listing(uri)
    single = list(files) == [""]  # the URI names one file
    names = {PurePosixPath(root).name if single else k: v for k, v in files.items()}
    target = Path(cache_dir or cache_root()) / "remote" / sha256_bytes(uri.encode())[:24]
    stamp = target / _LISTING
    if stamp.is_file() and json.loads(stamp.read_text()) == names:
        log.info("using cached copy of %s at %s", uri, target)
    else:
        if target.exists():
            shutil.rmtree(target)
        partial = target.with_name(target.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        for rel in names:
            local = partial.joinpath(*safe_relative(rel, uri).parts)
            local.parent.mkdir(parents=True, exist_ok=True)
            fs.get_file(root if single else f"{root}/{rel}", str(local))
        (partial / _LISTING).write_text(json.dumps(names, sort_keys=True))
        partial.rename(target)
        log.info("copied %s (%d files) to %s", uri, len(names), target)
    return target / next(iter(names)) if single else target
