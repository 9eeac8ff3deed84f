"""Reading a resolved data source through `datasets`, and the identity of what is read.

Local files and folders, the demo sample and fsspec URIs are read by the `datasets` builders (json, parquet,
csv, arrow, text) as streams, so nothing is converted into an Arrow cache; a remote file is first copied once
into the dynslice cache under its sha256. Hub datasets are read through `datasets` over the network (streamed,
or downloaded into the Hugging Face caches when streaming=false) and, offline, from the Hugging Face hub cache
(`HF_HUB_CACHE/datasets--namespace--name/snapshots/<commit>`, filled by an earlier download or `hf download
--repo-type dataset`), which may hold only some configs and splits.

The key of a split says exactly what changes its rows: for a hub dataset its id, config, split, the commit the
revision resolved to and the reading options; for anything else the sha256 of the split's files (in order)
and the reading options, so identical bytes give the same key wherever they live.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import datasets
import fsspec
import httpx
from datasets.data_files import DataFilesList, EmptyDatasetError, get_data_patterns, sanitize_patterns
from datasets.utils.metadata import MetadataConfigs
from huggingface_hub import DatasetCard, HfApi
from huggingface_hub import constants as hub_constants
from huggingface_hub.file_download import repo_folder_name

from dynslice.hashing import sha256_bytes, sha256_file
from dynslice.locations import cache_root, is_uri
from dynslice.datasources import FORMATS, DataSource, file_format, format_spec
from dynslice.errors import DataError, first_line

log = logging.getLogger(__name__)

_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_CHUNK = 1 << 20
# what `datasets` raises for a dataset it cannot find, configure or read (DatasetNotFoundError and
# DataFilesNotFoundError are FileNotFoundErrors; a missing or ambiguous config is a ValueError; a dataset
# script is a RuntimeError)
_LOAD_ERRORS = (OSError, ValueError, RuntimeError)
# the Hub cannot be reached: `datasets` raises ConnectionError, huggingface_hub lets httpx's errors through
_UNREACHABLE = (ConnectionError, httpx.TransportError)


@dataclass(frozen=True)
class OpenedSplit:
    """One split ready to iterate: rows that hold the text column, and the key of their content."""
    source: DataSource
    split: str  # the split read ("train" for a single file; the whole train split for a holdout preset)
    rows: Any  # datasets.IterableDataset, or datasets.Dataset for a hub split downloaded whole
    key: str


# -- files: local paths, remote copies and their content key ----------------------------------------------------

def _local_copy(url: str, storage_options: dict[str, Any]) -> tuple[str, str]:
    """(local path, sha256) of a remote file, copied into the cache under its content hash.

    The bytes are read on every call (the hash is what names the data); a copy already there is kept."""
    root = cache_root() / "data" / "remote"
    root.mkdir(parents=True, exist_ok=True)
    name = url.rstrip("/").rsplit("/", 1)[-1]
    incoming = root / f".incoming-{uuid.uuid4().hex}-{name}"
    digest = hashlib.sha256()
    try:
        fs, path = fsspec.core.url_to_fs(url, **storage_options)
        with fs.open(path, "rb") as src, open(incoming, "wb") as out:
            while chunk := src.read(_CHUNK):
                digest.update(chunk)
                out.write(chunk)
    except (ImportError, OSError, ValueError) as exc:  # ImportError: the protocol's package (s3fs, gcsfs) is missing
        incoming.unlink(missing_ok=True)
        raise DataError(f"cannot read {url}: {exc}") from exc
    target = root / digest.hexdigest() / name
    if target.is_file():
        incoming.unlink()
    else:
        target.parent.mkdir(exist_ok=True)
        os.replace(incoming, target)
    return str(target), digest.hexdigest()


def _fetched(files: list[str], storage_options: dict[str, Any]) -> list[tuple[str, str]]:
    """(local path, sha256) of each file, remote ones copied into the cache first."""
    return [_local_copy(f, storage_options) if is_uri(f) else (f, sha256_file(f)) for f in files]


def _content_key(digests: list[str], fmt: str, src: DataSource) -> str:
    recipe = {"files": digests, "format": fmt, "field": src.field}
    if fmt == "text":
        recipe["sample_by"] = src.sample_by
    return "sha256:" + sha256_bytes(json.dumps(recipe, sort_keys=True).encode())


def _hub_key(src: DataSource, commit: str) -> str:
    recipe = src.recipe
    options = {"config": src.config, "split": src.split, "revision": commit, "field": src.field}
    if recipe is not None:
        options.update(layout=recipe.layout if recipe.layout != "rows" else None,
                       holdout=",".join(map(str, recipe.holdout)) if recipe.holdout else None,
                       data_files=dict(recipe.data_files).get(_hub_split(src)))
    return "hub:" + format_spec(src.location, options)


# -- dataset folders: which files make a split --------------------------------------------------------------------

def _card_configs(folder: str, storage_options: dict[str, Any]) -> MetadataConfigs:
    """The `configs:` of the folder's README.md (empty without one)."""
    card = f"{folder.rstrip('/')}/README.md"
    try:
        with fsspec.open(card, "r", encoding="utf-8", **storage_options) as f:
            text = f.read()
    except FileNotFoundError:
        return MetadataConfigs()
    except OSError as exc:
        raise DataError(f"cannot read {card}: {exc}") from exc
    return MetadataConfigs.from_dataset_card_data(DatasetCard(text).data)


def _config_patterns(folder: str, config: str | None, src: DataSource) -> tuple[dict[str, list[str]], str]:
    """(split -> file patterns, base folder) of the chosen config, read from the README or the folder layout."""
    configs = _card_configs(folder, src.storage_options)
    where = src.describe()
    if not configs:
        if config:
            raise DataError(f"{where}: config {config!r} asked, but the folder declares no configs (README.md "
                            f"`configs:`); drop the config option")
        return get_data_patterns(folder, _download_config(src)), folder
    try:
        name = config or configs.get_default_config_name()
    except ValueError as exc:
        raise DataError(f"{where}: {exc}") from exc
    if name not in configs:
        wanted = f"no config {name!r}" if name else "several configs and no default"
        raise DataError(f"{where}: {wanted}; name one with ?config=NAME (configs: {', '.join(configs)})")
    params = configs[name]
    base = f"{folder.rstrip('/')}/{params['data_dir']}" if params.get("data_dir") else folder
    if params.get("data_files") is not None:
        return sanitize_patterns(params["data_files"]), base
    return get_data_patterns(base, _download_config(src)), base


def _folder_files(folder: str, split: str, config: str | None, src: DataSource) -> list[str]:
    """The files of one split of a dataset folder (local or fsspec), following the `datasets` conventions."""
    where = src.describe()
    try:
        patterns, base = _config_patterns(folder, config, src)
    except EmptyDatasetError as exc:
        raise DataError(f"{where}: no data files in {folder} ({exc})") from exc
    patterns = {str(name): value for name, value in patterns.items()}
    if split not in patterns:
        raise DataError(f"{where}: no split {split!r} (splits: {', '.join(patterns)})")
    return _matching(patterns[split], base, f"{where}: the files of split {split!r}", src)


def _matching(patterns: list[str], base: str, what: str, src: DataSource) -> list[str]:
    """The data files matching the patterns under base; an error when none does (e.g. a partial hub snapshot)."""
    try:
        files = list(DataFilesList.from_patterns(patterns, base_path=base, allowed_extensions=list(FORMATS),
                                                 download_config=_download_config(src)))
    except FileNotFoundError:
        files = []
    if not files:
        raise DataError(f"{what} ({', '.join(patterns)}) are not in {base}")
    return files


def _download_config(src: DataSource) -> datasets.DownloadConfig:
    return datasets.DownloadConfig(storage_options=dict(src.storage_options))


# -- builders --------------------------------------------------------------------------------------------------------

def _files_builder(files: list[str], split: str, src: DataSource) -> tuple[datasets.DatasetBuilder, str]:
    """A `datasets` builder over local files of one format, and that format."""
    formats = {file_format(Path(f).name) for f in files}
    if len(formats) != 1 or None in formats:
        names = ", ".join(sorted(Path(f).name for f in files)[:5])
        raise DataError(f"{src.describe()}: split {split!r} needs files of one known format "
                        f"({', '.join(sorted(FORMATS))}), got {names}")
    fmt = formats.pop()
    kwargs = {"sample_by": src.sample_by} if fmt == "text" else {}
    try:
        return datasets.load_dataset_builder(fmt, data_files={split: files}, **kwargs), fmt
    except _LOAD_ERRORS as exc:
        raise DataError(f"cannot read {src.describe()}: {exc}") from exc


def _stream(builder: datasets.DatasetBuilder, split: str, src: DataSource):
    try:
        return builder.as_streaming_dataset(split=split)
    except _LOAD_ERRORS as exc:
        raise DataError(f"cannot read {src.describe()} split {split!r}: {exc}") from exc


def _open_files(src: DataSource) -> OpenedSplit:
    """Demo, local or remote files and folders: the split's files, read as a stream, keyed by content."""
    split = src.split or "train"
    if src.kind == "demo":
        files = [str(Path(src.location) / f"{split}.jsonl")]
    elif src.kind == "file":
        files = [src.location]
    else:
        files = _folder_files(src.location, split, src.config, src)
    fetched = _fetched(files, src.storage_options)
    builder, fmt = _files_builder([path for path, _ in fetched], split, src)
    key = _content_key([digest for _, digest in fetched], fmt, src)
    return OpenedSplit(src, split, _stream(builder, split, src), key)


# -- hub datasets ----------------------------------------------------------------------------------------------------

def _hub_split(src: DataSource) -> str:
    """The hub split holding the rows (a holdout preset carves its splits out of train)."""
    recipe = src.recipe
    return "train" if recipe is not None and recipe.holdout else src.split


def _cached_snapshot(src: DataSource) -> Path | None:
    """The hub cache's snapshot folder of the revision (a branch or tag via refs/, or a commit), if present."""
    repo = repo_folder_name(repo_id=src.location, repo_type="dataset")
    folder = Path(hub_constants.HF_HUB_CACHE) / repo
    revision = src.revision or "main"
    ref = folder / "refs" / revision
    commit = ref.read_text().strip() if ref.is_file() else revision
    snapshot = folder / "snapshots" / commit
    return snapshot if _COMMIT.match(commit) and snapshot.is_dir() else None


def _open_hub_cached(src: DataSource, why: str) -> OpenedSplit:
    snapshot = _cached_snapshot(src)
    if snapshot is None:
        raise DataError(f"{src.describe()}: hub dataset {src.location} (revision {src.revision or 'main'}) is not in "
                        f"the Hugging Face cache {hub_constants.HF_HUB_CACHE} and {why}. Download it "
                        f"once online (`hf download --repo-type dataset {src.location}`, or a run with "
                        f"streaming=false), or use a local file or folder, or the demo `wiki`")
    split = _hub_split(src)
    files = dict(src.recipe.data_files) if src.recipe else {}
    if split in files:
        paths = _matching([files[split]], str(snapshot), f"{src.describe()}: the files of split {split!r}", src)
    else:
        paths = _folder_files(str(snapshot), split, src.config, src)
    builder, _ = _files_builder(paths, split, src)
    log.info("reading %s from the hub cache (commit %s)", src.describe(), snapshot.name[:12])
    return OpenedSplit(src, split, _stream(builder, split, src), _hub_key(src, snapshot.name))


def _hub_builder(src: DataSource, split: str) -> datasets.DatasetBuilder:
    files = dict(src.recipe.data_files) if src.recipe else {}
    kwargs: dict[str, Any] = {"data_files": {split: files[split]}} if split in files else {}
    try:
        return datasets.load_dataset_builder(src.location, name=src.config, revision=src.revision, **kwargs)
    except _UNREACHABLE:
        raise
    except _LOAD_ERRORS as exc:
        hint = (" (a dataset script: try ?revision=refs/convert/parquet, its Parquet export)"
                if "scripts are no longer supported" in str(exc) else "")
        raise DataError(f"cannot load hub dataset {src.describe()}: {exc}{hint}") from exc


def _commit_of(builder: datasets.DatasetBuilder, src: DataSource) -> str:
    """The commit the revision resolved to: `datasets` fixes it once per load and names the builder by it."""
    if _COMMIT.match(str(builder.hash)):
        return builder.hash
    return HfApi().dataset_info(src.location, revision=src.revision).sha


def _open_hub(src: DataSource) -> OpenedSplit:
    if datasets.config.HF_HUB_OFFLINE:
        return _open_hub_cached(src, "the Hub is offline (HF_HUB_OFFLINE/HF_DATASETS_OFFLINE)")
    split = _hub_split(src)
    try:
        builder = _hub_builder(src, split)
    except _UNREACHABLE as exc:
        log.warning("cannot reach the Hub for %s (%s); reading the local cache (set HF_HUB_OFFLINE=1 to skip the "
                    "Hub and its retries)", src.location, exc)
        return _open_hub_cached(src, f"the Hub cannot be reached ({exc})")
    splits = [str(name) for name in builder.config.data_files or {}]
    if splits and split not in splits:
        raise DataError(f"{src.describe()}: no split {split!r} (splits: {', '.join(splits)})")
    if src.streaming:
        rows = _stream(builder, split, src)
    else:  # downloaded into the Hugging Face caches, where later offline runs find it
        try:
            builder.download_and_prepare()
            rows = builder.as_dataset(split=split)
        except _LOAD_ERRORS as exc:
            raise DataError(f"cannot download {src.describe()}: {exc}") from exc
    return OpenedSplit(src, split, rows, _hub_key(src, _commit_of(builder, src)))


# -- rows -------------------------------------------------------------------------------------------------------------

def _with_text_column(opened: OpenedSplit) -> OpenedSplit:
    """The split with its text column checked and the others dropped, where the schema is known before reading
    (a JSON stream's is not: `texts` checks its rows instead, so that checking reads nothing extra)."""
    columns = opened.rows.column_names
    if columns is None:
        return opened
    _check_field(opened, columns)
    return OpenedSplit(opened.source, opened.split, opened.rows.select_columns([opened.source.field]), opened.key)


def _check_field(opened: OpenedSplit, columns) -> None:
    if opened.source.field not in columns:
        raise DataError(f"{opened.source.describe()}: split {opened.split!r} has no field {opened.source.field!r} "
                        f"(columns: {', '.join(columns)}); name the text column with ?field=NAME")


def open_split(src: DataSource) -> OpenedSplit:
    """Open the source's split for reading (hub commit resolved, files fetched and hashed, text column checked)."""
    opened = _open_hub(src) if src.kind == "hub" else _open_files(src)
    return _with_text_column(opened)


def texts(opened: OpenedSplit) -> Iterator[str]:
    """The split's texts in order (rows with no text skipped). Files are parsed while they are read, so a
    decoding or parsing failure surfaces here: it becomes a DataError naming the source (never its contents)."""
    field = opened.source.field
    rows = iter(opened.rows)
    while True:
        try:
            row = next(rows)
        except StopIteration:
            return
        except _LOAD_ERRORS as exc:
            raise _unreadable(opened, exc) from None
        if field not in row:
            _check_field(opened, list(row))
        if row[field] is not None:
            yield str(row[field])


def _unreadable(opened: OpenedSplit, exc: BaseException) -> DataError:
    where = opened.source.describe()
    cause = exc
    while cause is not None and not isinstance(cause, UnicodeDecodeError):
        cause = cause.__cause__ or cause.__context__
    if isinstance(cause, UnicodeDecodeError):
        return DataError(f"{where} is not UTF-8 text ({cause.encoding} cannot decode byte {cause.start}): convert "
                         f"it first, e.g. `iconv -f latin1 -t utf-8 FILE > FILE.utf8`")
    return DataError(f"cannot read {where}: {type(exc).__name__}: {first_line(exc)}")


def shuffled_texts(opened: OpenedSplit, seed: int, buffer_size: int, shards: int) -> Iterator[str]:
    """The split's texts in a seeded order: shard order shuffled, then rows drawn from a buffer of buffer_size
    rows fed by up to `shards` shards at a time."""
    rows = opened.rows
    if isinstance(rows, datasets.Dataset):
        rows = rows.to_iterable_dataset()
    rows = rows.shuffle(seed=seed, buffer_size=buffer_size, max_buffer_input_shards=shards)
    stream = OpenedSplit(opened.source, opened.split, rows, opened.key)
    return texts(stream)


def holdout_part(rows: list[str], fraction: float, seed: int, split: str) -> list[str]:
    """The train or test part of a seeded split of the rows, exactly as `datasets.train_test_split` cuts it."""
    table = datasets.Dataset.from_dict({"text": rows})
    return table.train_test_split(test_size=fraction, seed=seed)[split]["text"]
