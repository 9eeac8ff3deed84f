"""One data resolver (hub short names, local .txt/.jsonl/.parquet files or folders, fsspec URIs, the demo
Wikipedia sample) and seeded calibration sampling with attention masks.

Resolution (`resolve_data`) only names things; reading (`load_corpus`) does the I/O. A corpus is a list of
documents (calibration windows never cross them unless glued) plus the text perplexity is measured on (the
rows joined with a blank line, as SliceGPT and GPTQ do for WikiText-2).
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsspec
import torch
from tqdm.auto import tqdm

from dynslice.hashing import sha256_bytes
from dynslice.locations import cache_root
from dynslice.errors import DataError

log = logging.getLogger(__name__)

EVAL_JOINER = "\n\n"
TEXT_SUFFIXES = (".txt", ".text", ".utf8", ".md")
FILE_SUFFIXES = TEXT_SUFFIXES + (".jsonl", ".json", ".parquet")
# demo data names -> folder under the cache root holding {split}.jsonl, written by `dynslice assets fetch`
DEMO_DATA = {"wiki": "data/wiki"}


@dataclass(frozen=True)
class HubDataset:
    """Where a paper's dataset lives on the hub and how its rows become documents."""
    path: str
    name: str | None
    field: str
    splits: tuple[str, ...]
    eval_split: str  # the split perplexity is reported on
    data_files: tuple[tuple[str, str], ...] = ()  # split -> file inside the repo (C4 shards)
    layout: str = "rows"  # rows: one row per document | wikitext: rows grouped by article heading | stream
    holdout: tuple[float, int] | None = None  # (test fraction, seed) for datasets with only a train split


HUB_DATASETS: dict[str, HubDataset] = {
    "wikitext2": HubDataset("Salesforce/wikitext", "wikitext-2-raw-v1", "text", ("train", "validation", "test"),
                            "test", layout="wikitext"),
    "ptb": HubDataset("ptb-text-only/ptb_text_only", "penn_treebank", "sentence",
                      ("train", "validation", "test"), "test", layout="stream"),
    # SliceGPT/GPTQ use the first shard of each split, not the 300+ GB corpus
    "c4": HubDataset("allenai/c4", None, "text", ("train", "validation"), "validation",
                     data_files=(("train", "en/c4-train.00000-of-01024.json.gz"),
                                 ("validation", "en/c4-validation.00000-of-00008.json.gz"))),
    "pg19": HubDataset("deepmind/pg19", None, "text", ("train", "validation", "test"), "test"),
    # alpaca ships one split; SliceGPT holds out 20% with seed 42 as its test set
    "alpaca": HubDataset("tatsu-lab/alpaca", None, "text", ("train", "test"), "test", holdout=(0.2, 42)),
}
ALIASES = {"wikitext": "wikitext2", "wikitext-2": "wikitext2", "wikitext-2-raw-v1": "wikitext2",
           "penn_treebank": "ptb", "ptb_text_only": "ptb"}


@dataclass(frozen=True)
class DataSource:
    kind: str  # hub | demo | file | uri
    location: str  # hub path, local path or URI
    split: str | None  # None for a single named file
    field: str = "text"  # jsonl/parquet column holding the text
    separator: str | None = None  # .txt: documents separated by this string (None: one document per file)
    hub: HubDataset | None = None
    revision: str | None = None

    def describe(self) -> str:
        if self.hub is not None:
            return f"{self.hub.path}" + (f"/{self.hub.name}" if self.hub.name else "") + f" [{self.split}]"
        return self.location + (f" [{self.split}]" if self.split else "")


@dataclass(frozen=True)
class Corpus:
    documents: tuple[str, ...]
    eval_text: str
    source_key: str  # hub:path/name@revision or sha256 of the bytes read
    split: str | None


@dataclass(frozen=True)
class DataIdentity:
    """What calibration caching keys on: the data, the split, the sampling and the tokenizer."""
    source: str
    split: str | None
    sampling: tuple[tuple[str, Any], ...]
    tokenizer: str

    @property
    def key(self) -> str:
        return sha256_bytes(json.dumps(self.to_dict(with_key=False), sort_keys=True).encode())

    def to_dict(self, with_key: bool = True) -> dict[str, Any]:
        out = {"source": self.source, "split": self.split, "sampling": dict(self.sampling),
               "tokenizer": self.tokenizer}
        return dict(out, key=self.key) if with_key else out


@dataclass(frozen=True)
class CalibrationSample:
    input_ids: torch.Tensor  # [N, T] int64
    attention_mask: torch.Tensor  # [N, T] int64, 0 on right padding
    origins: tuple[tuple[int, int], ...]  # (document index, first token) of each window; doc -1 = glued stream
    identity: DataIdentity
    num_documents: int = 0

    def as_dict(self) -> dict[str, torch.Tensor]:
        """What `dynslice.calibration.as_calibration` (and slice_model) accepts."""
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask}


# -- resolution (no reading) ---------------------------------------------------------------------------

def hub_dataset(name: str) -> HubDataset:
    key = ALIASES.get(name.lower(), name.lower())
    if key not in HUB_DATASETS:
        raise DataError(f"unknown dataset {name!r}: use one of {', '.join(sorted(HUB_DATASETS))}, the demo "
                        f"{', '.join(DEMO_DATA)}, a local .txt/.jsonl/.parquet file or folder, or an fsspec URI")
    return HUB_DATASETS[key]


def _split_file(folder_files: list[str], split: str, where: str) -> str:
    for suffix in FILE_SUFFIXES:
        for name in folder_files:
            if Path(name).name == f"{split}{suffix}":
                return name
    raise DataError(f"{where} has no {split}.jsonl/.txt/.parquet file: name the file itself, or add one "
                    f"for split {split!r}")


def resolve_data(source: str | os.PathLike, split: str | None = None, *, field: str = "text",
                 separator: str | None = None, revision: str | None = None,
                 cache_dir: str | os.PathLike | None = None) -> DataSource:
    """Name the data to read. split=None means the source's own default (train for folders and the demo)."""
    source = str(source)
    if source in DEMO_DATA:
        folder = Path(cache_dir or cache_root()) / DEMO_DATA[source]
        split = split or "train"
        path = folder / f"{split}.jsonl"
        if not path.is_file():
            raise DataError(f"demo data {source!r} split {split!r} is not in {folder}: run `dynslice assets "
                            f"fetch` first (splits: train, validation, test)")
        return DataSource("demo", str(path), split, "text", None)
    if "://" in source and not source.startswith("file://"):
        if source.rstrip("/").endswith(FILE_SUFFIXES):
            return DataSource("uri", source, None, field, separator)
        fs, root = fsspec.core.url_to_fs(source)
        try:
            names = fs.ls(root, detail=False)
        except (OSError, ValueError) as exc:
            raise DataError(f"cannot list {source}: {exc}") from exc
        name = _split_file(names, split or "train", source)
        return DataSource("uri", f"{source.rstrip('/')}/{Path(name).name}", split or "train", field, separator)
    path = Path(source.removeprefix("file://")).expanduser()
    if path.is_dir():
        name = _split_file([p.name for p in path.iterdir()], split or "train", str(path))
        return DataSource("file", str(path / name), split or "train", field, separator)
    if path.is_file():
        if not path.name.endswith(FILE_SUFFIXES):
            raise DataError(f"{path}: unsupported file type; use one of {', '.join(FILE_SUFFIXES)}")
        return DataSource("file", str(path), None, field, separator)
    if path.suffix in FILE_SUFFIXES or "/" in source:
        raise DataError(f"no such file or folder: {source}")
    hub = hub_dataset(source)
    split = split or hub.splits[0]
    if split not in hub.splits:
        raise DataError(f"{source} has splits {', '.join(hub.splits)}, not {split!r}")
    return DataSource("hub", hub.path, split, hub.field, None, hub=hub, revision=revision)


def default_eval_split(source: str) -> str:
    """The split perplexity is reported on: the paper's for hub names, else `test`."""
    source = str(source)
    if source in DEMO_DATA or "/" in source or "." in source:
        return "test"
    return hub_dataset(source).eval_split


# -- reading -------------------------------------------------------------------------------------------

_WIKITEXT_TITLE = re.compile(r"^ = [^=].* = $")


def group_wikitext(rows: list[str]) -> list[str]:
    """WikiText rows are lines; an article starts at a ` = Title = ` row."""
    docs: list[list[str]] = []
    for row in rows:
        if _WIKITEXT_TITLE.match(row.rstrip("\n")) or not docs:
            docs.append([])
        docs[-1].append(row)
    return [text for text in ("".join(d).strip() for d in docs) if text]


def _hub_rows(src: DataSource) -> tuple[list[str], str]:
    try:
        import datasets
    except ImportError as exc:
        raise DataError("reading hub datasets needs the `datasets` package: pip install datasets") from exc
    hub = src.hub
    files = dict(hub.data_files)
    split = "train" if hub.holdout else src.split
    kwargs: dict[str, Any] = {"split": split}
    if hub.name:
        kwargs["name"] = hub.name
    if files:
        kwargs["data_files"] = {split: files[split]}
    if src.revision:
        kwargs["revision"] = src.revision
    try:
        ds = datasets.load_dataset(hub.path, **kwargs)
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot load {src.describe()} from the hub: {exc}. Offline, it must be in the local "
                        f"datasets cache; otherwise pass a local .txt/.jsonl/.parquet file, a folder or an "
                        f"fsspec URI (demo: `dynslice assets fetch` then `wiki`)") from exc
    if hub.holdout:
        fraction, seed = hub.holdout
        ds = ds.train_test_split(test_size=fraction, seed=seed)[src.split]
    key = f"hub:{hub.path}/{hub.name or ''}@{src.revision or 'main'}"
    return list(ds[hub.field]), key


def _records_text(records: list[dict], field: str, where: str) -> list[str]:
    out = []
    for i, rec in enumerate(records):
        if not isinstance(rec, dict) or field not in rec:
            keys = sorted(rec) if isinstance(rec, dict) else type(rec).__name__
            raise DataError(f"{where}: record {i} has no {field!r} field (has {keys}); pass --field NAME")
        out.append(str(rec[field]))
    return out


def parse_file(data: bytes, name: str, field: str = "text", separator: str | None = None) -> list[str]:
    """Documents of one file's bytes: .txt (split on `separator`), .jsonl/.json records, .parquet column."""
    if name.endswith(TEXT_SUFFIXES):
        text = data.decode("utf-8")
        return [text] if separator is None else text.split(separator)
    if name.endswith(".parquet"):
        import pyarrow.parquet as pq

        table = pq.read_table(io.BytesIO(data))
        if field not in table.column_names:
            raise DataError(f"{name}: no column {field!r} (has {table.column_names}); pass --field NAME")
        return [str(v) for v in table.column(field).to_pylist()]
    text = data.decode("utf-8")
    try:
        if name.endswith(".json") and text.lstrip().startswith("["):
            records = json.loads(text)
        else:
            records = [json.loads(line) for line in text.splitlines() if line.strip()]
    except json.JSONDecodeError as exc:
        raise DataError(f"{name}: not valid JSON lines ({exc})") from exc
    return _records_text(records, field, name)


def load_corpus(src: DataSource) -> Corpus:
    """Read a resolved source into documents (empty ones dropped) and the text perplexity is measured on."""
    if src.kind == "hub":
        rows, key = _hub_rows(src)
        layout = src.hub.layout
        if layout == "wikitext":
            docs = group_wikitext(rows)
        elif layout == "stream":
            docs = [" ".join(r.strip() for r in rows)]
        else:
            docs = rows
        eval_text = EVAL_JOINER.join(rows)
    else:
        try:
            with fsspec.open(src.location, "rb") as f:
                data = f.read()
        except (OSError, ValueError) as exc:
            raise DataError(f"cannot read {src.location}: {exc}") from exc
        rows = parse_file(data, src.location, src.field, src.separator)
        docs, key = rows, f"sha256:{sha256_bytes(data)}"
        eval_text = EVAL_JOINER.join(r.strip() for r in rows if r.strip())
    docs = [d for d in docs if d.strip()]
    if not docs:
        raise DataError(f"{src.describe()} holds no text")
    log.info("read %d documents from %s", len(docs), src.describe())
    return Corpus(tuple(docs), eval_text, key, src.split)


# -- calibration sampling --------------------------------------------------------------------------------

def tokenizer_fingerprint(tokenizer) -> str:
    """sha256 of what decides token ids: the fast tokenizer's full JSON, else the vocabulary."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        body = backend.to_str()
    else:
        body = json.dumps(sorted(tokenizer.get_vocab().items()))
    special = json.dumps(getattr(tokenizer, "special_tokens_map", {}), sort_keys=True, default=str)
    return sha256_bytes(f"{type(tokenizer).__name__}\n{special}\n{body}".encode())


def pad_id(tokenizer) -> int:
    for attr in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, attr, None)
        if isinstance(value, int):
            return value
    return 0


def _tokenize(tokenizer, texts: list[str]) -> list[list[int]]:
    return tokenizer(list(texts), add_special_tokens=False, verbose=False)["input_ids"]


def _slots(length: int, seqlen: int, pad_short: bool, g: torch.Generator) -> list[int]:
    """Starts of the non-overlapping windows a document offers, shifted by a random offset."""
    if length < seqlen:
        return [0] if pad_short and length > 0 else []
    count = length // seqlen
    shift = int(torch.randint(0, length - count * seqlen + 1, (1,), generator=g))
    return [shift + k * seqlen for k in range(count)]


def _not_enough(where: str, tokens: int, docs: int, found: int, n: int, seqlen: int, glue: bool) -> DataError:
    fix = ("use fewer or shorter windows (nsamples/seqlen) or more text" if glue else
           "use fewer or shorter windows (nsamples/seqlen), more text, glue=True (--glue) to let windows span "
           "documents, or pad_short=True (--pad-short) to pad short documents")
    return DataError(f"{where} is too short for {n} x {seqlen} tokens: {tokens} tokens in {docs} documents give "
                     f"{found} windows. Fix: {fix}")


def sample_windows(tokenizer, corpus: Corpus, n: int, seqlen: int, *, seed: int = 0, glue: bool = False,
                   pad_short: bool = False, where: str = "data", chunk: int = 256) -> CalibrationSample:
    """N windows of T tokens, seeded.

    Not glued: each window lies inside one document (documents visited in a seeded random order, one window
    each first, further non-overlapping windows of long documents only if needed); pad_short=True also
    accepts documents shorter than T as one right-padded window (attention_mask 0 on the padding).
    Glued: the documents joined by the EOS token form one stream cut into non-overlapping windows.
    """
    if n < 1 or seqlen < 2:
        raise DataError(f"need nsamples >= 1 and seqlen >= 2, got {n} and {seqlen}")
    g = torch.Generator().manual_seed(seed)
    docs = corpus.documents
    pad = pad_id(tokenizer)
    sampling = (("glue", glue), ("n", n), ("pad_short", pad_short), ("seed", seed), ("seqlen", seqlen))
    identity = DataIdentity(corpus.source_key, corpus.split, sampling, tokenizer_fingerprint(tokenizer))
    if glue:
        eos = getattr(tokenizer, "eos_token_id", None)
        stream: list[int] = []
        for start in tqdm(range(0, len(docs), chunk), desc="tokenizing", unit="chunk", leave=False):
            for ids in _tokenize(tokenizer, docs[start:start + chunk]):
                stream += ids + ([eos] if isinstance(eos, int) else [])
        starts = _slots(len(stream), seqlen, False, g)
        if len(starts) < n:
            raise _not_enough(where, len(stream), len(docs), len(starts), n, seqlen, glue)
        pick = torch.randperm(len(starts), generator=g)[:n].tolist()
        rows = [stream[starts[i]:starts[i] + seqlen] for i in pick]
        origins = tuple((-1, starts[i]) for i in pick)
        ids = torch.tensor(rows, dtype=torch.long)
        return CalibrationSample(ids, torch.ones_like(ids), origins, identity, len(docs))

    order = torch.randperm(len(docs), generator=g).tolist()
    tokens: dict[int, list[int]] = {}
    slots: dict[int, list[int]] = {}
    picked: list[tuple[int, int]] = []
    bar = tqdm(total=n, desc="sampling windows", unit="window", leave=False)
    for start in range(0, len(order), chunk):  # first pass: one window per document, tokenized lazily
        part = order[start:start + chunk]
        for d, ids in zip(part, _tokenize(tokenizer, [docs[i] for i in part])):
            tokens[d], slots[d] = ids, _slots(len(ids), seqlen, pad_short, g)
            if slots[d] and len(picked) < n:
                picked.append((d, slots[d][0]))
                bar.update(1)
        if len(picked) == n:
            break
    round_ = 1
    while len(picked) < n and any(len(s) > round_ for s in slots.values()):  # later passes: more per document
        for d in order:
            if len(slots[d]) > round_ and len(picked) < n:
                picked.append((d, slots[d][round_]))
                bar.update(1)
        round_ += 1
    bar.close()
    if len(picked) < n:
        total = sum(len(t) for t in tokens.values())
        found = sum(len(s) for s in slots.values())
        raise _not_enough(where, total, len(docs), found, n, seqlen, glue)
    ids = torch.full((n, seqlen), pad, dtype=torch.long)
    mask = torch.zeros((n, seqlen), dtype=torch.long)
    for row, (d, s) in enumerate(picked):
        window = tokens[d][s:s + seqlen]
        ids[row, :len(window)] = torch.tensor(window, dtype=torch.long)
        mask[row, :len(window)] = 1
    return CalibrationSample(ids, mask, tuple(picked), identity, len(docs))


def calibration_windows(source: str | os.PathLike, tokenizer, n: int, seqlen: int, *, split: str | None = None,
                        seed: int = 0, glue: bool = False, pad_short: bool = False, field: str = "text",
                        separator: str | None = None, cache_dir: str | os.PathLike | None = None
                        ) -> CalibrationSample:
    """Resolve, read and sample in one call (the default split is train)."""
    src = resolve_data(source, split, field=field, separator=separator, cache_dir=cache_dir)
    return sample_windows(tokenizer, load_corpus(src), n, seqlen, seed=seed, glue=glue, pad_short=pad_short,
                          where=src.describe())
