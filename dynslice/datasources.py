"""Naming calibration and evaluation data: one source string, resolved without reading anything.

A source is a location, optionally followed by `?option=value&...`:

    wiki                                   the demo Wikipedia sample (`dynslice assets fetch`)
    wikitext2, ptb, c4, pg19, alpaca       presets: the datasets the papers use (see PRESETS)
    HuggingFaceFW/fineweb-edu?config=sample-10BT
    allenai/c4?config=en&split=validation&revision=1588ec454efa1a09f29cd18ddd04fe05fc8653a2
    ./corpus  ./docs.jsonl?field=body  notes.txt?sample_by=paragraph
    s3://team-bucket/calib/train.parquet   any fsspec URI of a file or a dataset folder

Options (all optional):
    config     the dataset's configuration (subset), e.g. sample-10BT
    split      train, validation, test, ... (default: train; a single file is its own split)
    field      the column holding the text (default: text)
    revision   hub branch, tag or commit (default: main); the data identity always pins the commit
    streaming  true: read rows lazily and sample from a seeded shuffle buffer, never downloading a whole
               corpus (the default for hub datasets other than the small presets); false: read the whole split
    sample_by  plain-text files only: document (one row per file, the default), paragraph or line

Which location is which: a demo or preset name first, then anything with `://` is an fsspec URI, then an
existing local file or folder, then `namespace/name` is a Hugging Face Hub dataset. Options written in the
string win over the same settings passed as arguments (those fill in what the string leaves open).
Folders follow the `datasets` layout conventions (train.jsonl, data/test-00000-of-00001.parquet, a README.md
with `configs:`), one file format per folder.
"""

from __future__ import annotations

import logging
import os
import re
import dataclasses
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

from dynslice.locations import cache_root, is_uri
from dynslice.errors import DataError

log = logging.getLogger(__name__)

OPTIONS = ("config", "split", "field", "revision", "streaming", "sample_by")
SAMPLE_BY = ("document", "paragraph", "line")
# demo data names -> folder under the cache root holding {split}.jsonl, written by `dynslice assets fetch`
DEMO_DATA = {"wiki": "data/wiki"}
# single files: the `datasets` builder that reads each kind (a compression suffix may follow, e.g. .jsonl.gz)
FORMATS = {".jsonl": "json", ".json": "json", ".ndjson": "json", ".parquet": "parquet", ".csv": "csv",
           ".arrow": "arrow", ".txt": "text", ".text": "text", ".utf8": "text", ".md": "text"}
_COMPRESSION = (".gz", ".bz2", ".xz", ".zst", ".lz4")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_TRUE, _FALSE = ("true", "1", "yes"), ("false", "0", "no")


@dataclass(frozen=True)
class Preset:
    """A dataset the papers use: its hub source in the spec syntax, plus how its rows become documents."""
    spec: str
    splits: tuple[str, ...]
    eval_split: str  # the split perplexity is reported on
    # rows: one row per document | wikitext: rows grouped by article heading | stream: all rows as one document
    layout: str = "rows"
    holdout: tuple[float, int] | None = None  # (test fraction, seed) carved out of the train split
    data_files: tuple[tuple[str, str], ...] = ()  # split -> file inside the repo (one C4 shard, not the corpus)


PRESETS: dict[str, Preset] = {
    # small corpora read whole (and so cached for offline reruns); their documents need every row in order
    "wikitext2": Preset("Salesforce/wikitext?config=wikitext-2-raw-v1&streaming=false",
                        ("train", "validation", "test"), "test", layout="wikitext"),
    "ptb": Preset("ptb-text-only/ptb_text_only?config=penn_treebank&field=sentence&streaming=false",
                  ("train", "validation", "test"), "test", layout="stream"),
    # SliceGPT/GPTQ use the first shard of each split, not the 300+ GB corpus
    "c4": Preset("allenai/c4", ("train", "validation"), "validation",
                 data_files=(("train", "en/c4-train.00000-of-01024.json.gz"),
                             ("validation", "en/c4-validation.00000-of-00008.json.gz"))),
    "pg19": Preset("deepmind/pg19", ("train", "validation", "test"), "test"),
    # alpaca ships one split; SliceGPT holds out 20% with seed 42 as its test set
    "alpaca": Preset("tatsu-lab/alpaca?streaming=false", ("train", "test"), "test", holdout=(0.2, 42)),
}
ALIASES = {"wikitext": "wikitext2", "wikitext-2": "wikitext2", "wikitext-2-raw-v1": "wikitext2",
           "penn_treebank": "ptb", "ptb_text_only": "ptb"}


@dataclass(frozen=True)
class DataSource:
    """A resolved source: where the rows are and how to read them (nothing read yet)."""
    kind: str  # hub | demo | file | folder
    location: str  # hub id, local path or fsspec URI
    split: str | None  # None for a single file (it is its own split)
    field: str = "text"
    config: str | None = None
    revision: str | None = None  # as asked; the commit it resolves to is part of the data identity
    streaming: bool = False
    sample_by: str = "document"
    preset: str | None = None
    storage_options: dict[str, Any] = dataclasses.field(default_factory=dict, compare=False, hash=False)

    @property
    def recipe(self) -> Preset | None:
        return PRESETS[self.preset] if self.preset else None

    @property
    def samples_from_stream(self) -> bool:
        """Calibration samples from a seeded shuffle buffer rather than a permutation of the whole split."""
        return self.streaming and (self.recipe is None or (self.recipe.layout == "rows" and not self.recipe.holdout))

    def describe(self) -> str:
        # the demo's location is its folder in the cache, named like the demo
        name = self.preset or (Path(self.location).name if self.kind == "demo" else self.location)
        return name + (f" ({self.config})" if self.config and not self.preset else "") + (
            f" [{self.split}]" if self.split else "")


# -- the spec syntax ------------------------------------------------------------------------------------------

def parse_spec(text: str) -> tuple[str, dict[str, str]]:
    """Split `location?opt=value&...` into the location and its options (checked against OPTIONS)."""
    location, sep, query = text.rpartition("?")
    if not sep:
        return text, {}
    try:
        pairs = parse_qsl(query, keep_blank_values=False, strict_parsing=True)
    except ValueError as exc:
        raise DataError(f"{text!r}: cannot read the options after '?' ({exc}); write them as "
                        f"?split=test&field=body") from exc
    options: dict[str, str] = {}
    for key, value in pairs:
        if key not in OPTIONS:
            raise DataError(f"{text!r}: unknown option {key!r}; options are {', '.join(OPTIONS)}")
        if key in options and options[key] != value:
            raise DataError(f"{text!r}: option {key!r} given twice")
        options[key] = value
    return location, options


def format_spec(location: str, options: dict[str, Any]) -> str:
    """The spec string of a location and options (None values left out, keys sorted)."""
    items = sorted((k, str(v).lower() if isinstance(v, bool) else str(v)) for k, v in options.items()
                   if v is not None)
    return location + ("?" + urlencode(items, safe="/:,") if items else "")


def _flag(value: str | bool | None, where: str) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    if value.lower() in _TRUE + _FALSE:
        return value.lower() in _TRUE
    raise DataError(f"{where}: streaming must be true or false, got {value!r}")


def file_format(name: str) -> str | None:
    """The builder for a file name (json, parquet, csv, arrow, text), None when the suffix is not a data file."""
    lowered = name.lower()
    for suffix in _COMPRESSION:
        lowered = lowered.removesuffix(suffix)
    return FORMATS.get(Path(lowered).suffix)


def preset_name(name: str) -> str | None:
    key = ALIASES.get(name.lower(), name.lower())
    return key if key in PRESETS else None


# -- resolution ---------------------------------------------------------------------------------------------

def _location_kind(location: str) -> tuple[str, str]:
    """(kind, location) of a location that is not a demo or preset name."""
    if is_uri(location):
        # a URI names a file when its name says so (no listing here); anything else is a dataset folder
        return ("file" if file_format(location.rstrip("/").rsplit("/", 1)[-1]) else "folder"), location
    path = Path(location.removeprefix("file://")).expanduser()
    if path.is_dir():
        return "folder", str(path)
    if path.is_file():
        if not file_format(path.name):
            raise DataError(f"{path}: unsupported file type; use one of {', '.join(sorted(FORMATS))} (or a "
                            f"compressed one, e.g. .jsonl.gz)")
        return "file", str(path)
    if _HUB_ID.match(location) and not location.startswith((".", "~")):
        return "hub", location
    raise DataError(f"no such file or folder: {location}; a data source is a local file or folder, an fsspec URI, "
                    f"a hub dataset id (namespace/name), a preset ({', '.join(PRESETS)}) or the demo "
                    f"{', '.join(DEMO_DATA)}")


def _names_a_path(source: str | os.PathLike) -> bool:
    """A path object, or a string naming an existing file or folder: never read for options."""
    return isinstance(source, os.PathLike) or os.path.exists(os.path.expanduser(source))


def _merge(options: dict[str, str], given: dict[str, Any], where: str) -> dict[str, Any]:
    """Options from the string win; arguments fill in what it leaves open."""
    out = dict(options)
    for key, value in given.items():
        if value is None:
            continue
        if key in out and str(out[key]).lower() != str(value).lower():
            log.info("%s names %s=%s; the argument %s=%s is not used", where, key, out[key], key, value)
            continue
        out.setdefault(key, value)
    return out


def _check_preset(name: str, options: dict[str, Any], where: str) -> None:
    preset = PRESETS[name]
    if options.get("split") and options["split"] not in preset.splits:
        raise DataError(f"{where} has splits {', '.join(preset.splits)}, not {options['split']!r}")
    if _flag(options.get("streaming"), where) and (preset.layout != "rows" or preset.holdout):
        raise DataError(f"{where} is read whole (its documents need every row in order): drop streaming=true")


def _demo(name: str, split: str | None, cache_dir: str | os.PathLike | None) -> DataSource:
    folder = Path(cache_dir or cache_root()) / DEMO_DATA[name]
    split = split or "train"
    if not (folder / f"{split}.jsonl").is_file():
        raise DataError(f"demo data {name!r} split {split!r} is not in {folder}: run `dynslice assets fetch` "
                        f"first (splits: train, validation, test)")
    return DataSource("demo", str(folder), split)


def resolve_data(source: str | os.PathLike, split: str | None = None, *, field: str | None = None,
                 config: str | None = None, revision: str | None = None, streaming: bool | None = None,
                 sample_by: str | None = None, storage_options: dict[str, Any] | None = None,
                 cache_dir: str | os.PathLike | None = None) -> DataSource:
    """Name the data to read (see the module docstring for the syntax); nothing is downloaded here.

    Arguments fill in what the source string leaves open. cache_dir: the dynslice cache holding the demo data.
    """
    text = os.fspath(source)
    if _names_a_path(source):
        location, options = text, {}
    else:
        location, options = parse_spec(text)
    preset = preset_name(location)
    if preset:
        location, fixed = parse_spec(PRESETS[preset].spec)
        options = {**fixed, **options}
    given = {"split": split, "field": field, "config": config, "revision": revision, "streaming": streaming,
             "sample_by": sample_by}
    opts = _merge(options, given, text)
    if preset:
        _check_preset(preset, opts, text)
    if opts.get("sample_by", "document") not in SAMPLE_BY:
        raise DataError(f"{text}: sample_by must be one of {', '.join(SAMPLE_BY)}, got {opts['sample_by']!r}")
    if location in DEMO_DATA:
        src = _demo(location, opts.get("split"), cache_dir)
    else:
        kind, location = ("hub", location) if preset else _location_kind(location)
        # a single file is its own split: a split asked of it (e.g. the evaluation's default) changes nothing
        src = DataSource(kind, location, None if kind == "file" else opts.get("split") or "train")
    streamed = _flag(opts.get("streaming"), text)
    return replace(src, field=opts.get("field") or "text", config=opts.get("config"), revision=opts.get("revision"),
                   streaming=src.kind == "hub" if streamed is None else streamed,
                   sample_by=opts.get("sample_by") or "document", preset=preset,
                   storage_options=dict(storage_options or {}))


def default_eval_split(source: str | os.PathLike) -> str:
    """The split perplexity is reported on: the one the string names, the paper's for presets, else `test`."""
    text = os.fspath(source)
    if _names_a_path(source):
        return "test"
    location, options = parse_spec(text)
    if options.get("split"):
        return options["split"]
    preset = preset_name(location)
    return PRESETS[preset].eval_split if preset else "test"
