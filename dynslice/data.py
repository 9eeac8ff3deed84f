"""Calibration and evaluation text: corpora read through `datasets`, and seeded calibration windows.

A source is named by one string (`dynslice.datasources`: presets such as wikitext2, the demo `wiki`, any hub
dataset with `?config=...&split=...&field=...&revision=...`, local files and folders, fsspec URIs) and read by
`dynslice.datareader`. A corpus is a list of documents (calibration windows never cross them unless glued)
plus the text perplexity is measured on: the rows joined with a blank line, as SliceGPT and GPTQ do for
WikiText-2 (hub rows as they are; rows of local files stripped, empty ones dropped).

Calibration windows are drawn in a seeded random order of documents: a permutation of the whole split, or,
for a streamed source, a seeded shuffle buffer over the stream, so that sampling N windows reads about
N + buffer rows of a corpus and never downloads the whole of it.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from itertools import islice
from typing import Any, Iterator

import torch
from tqdm.auto import tqdm

from dynslice.datasources import DEMO_DATA, PRESETS, DataSource, default_eval_split, resolve_data
from dynslice.hashing import sha256_bytes
from dynslice.errors import DataError

__all__ = ["DEMO_DATA", "PRESETS", "CalibrationSample", "Corpus", "DataIdentity", "DataSource", "calibration_windows",
           "data_key", "default_eval_split", "load_corpus", "resolve_data", "sample_stream", "sample_windows",
           "tokenizer_fingerprint"]

log = logging.getLogger(__name__)

EVAL_JOINER = "\n\n"
SHUFFLE_BUFFER = 1000  # rows a streamed source draws from (the `datasets` default); part of the data identity
# shards feeding that buffer at a time (the `datasets` default, pinned here because it changes the order)
SHUFFLE_SHARDS = 10
SAMPLER_VERSION = 2  # bump when the same settings start to pick other windows: cached captures then recompute


@dataclass(frozen=True)
class Corpus:
    documents: tuple[str, ...]
    eval_text: str
    source_key: str  # hub:<id>?...&revision=<commit>, or sha256:<content of the files read>
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
    num_documents: int = 0  # documents in the corpus, or read from the stream

    def as_dict(self) -> dict[str, torch.Tensor]:
        """What `dynslice.calibration.as_calibration` (and slice_model) accepts."""
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask}


# -- corpora ---------------------------------------------------------------------------------------------------------

_WIKITEXT_TITLE = re.compile(r"^ = [^=].* = $")


def group_wikitext(rows: list[str]) -> list[str]:
    """WikiText rows are lines; an article starts at a ` = Title = ` row."""
    docs: list[list[str]] = []
    for row in rows:
        if _WIKITEXT_TITLE.match(row.rstrip("\n")) or not docs:
            docs.append([])
        docs[-1].append(row)
    return [text for text in ("".join(d).strip() for d in docs) if text]


def _documents(rows: list[str], layout: str) -> list[str]:
    if layout == "wikitext":
        return group_wikitext(rows)
    if layout == "stream":  # e.g. PTB: one sentence per row, read as one running text
        return [" ".join(r.strip() for r in rows)]
    return rows


def load_corpus(src: DataSource) -> Corpus:
    """Read a resolved source's split into documents (empty ones dropped) and the text perplexity is measured on."""
    from dynslice.datareader import holdout_part, open_split, texts

    opened = open_split(src)
    rows = list(tqdm(texts(opened), desc=f"reading {src.describe()}", unit="row", leave=False))
    recipe = src.recipe
    if recipe is not None and recipe.holdout:
        rows = holdout_part(rows, *recipe.holdout, src.split)
    docs = [d for d in _documents(rows, recipe.layout if recipe else "rows") if d.strip()]
    if not docs:
        raise DataError(f"{src.describe()} holds no text")
    if src.kind == "hub":
        eval_text = EVAL_JOINER.join(rows)
    else:
        eval_text = EVAL_JOINER.join(r.strip() for r in rows if r.strip())
    log.info("read %d documents from %s", len(docs), src.describe())
    return Corpus(tuple(docs), eval_text, opened.key, src.split)


def data_key(src: DataSource) -> str:
    """The key `load_corpus(src).source_key` would have, without parsing rows (files are still hashed, and a
    hub split read whole, streaming=false, is downloaded first)."""
    from dynslice.datareader import open_split

    return open_split(src).key


# -- calibration sampling --------------------------------------------------------------------------------------------

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


def _tokenized(tokenizer, docs: Iterator[tuple[int, str]], batch) -> Iterator[tuple[int, list[int]]]:
    """(document index, token ids) in visiting order, tokenized in batches of batch() documents.

    batch is asked again before every batch, so a sampler that needs few more documents reads few more."""
    while part := list(islice(docs, batch())):
        yield from zip((d for d, _ in part), _tokenize(tokenizer, [text for _, text in part]))


def _slots(length: int, seqlen: int, pad_short: bool, g: torch.Generator) -> list[int]:
    """Starts of the non-overlapping windows a document offers, shifted by a random offset."""
    if length < seqlen:
        return [0] if pad_short and length > 0 else []
    count = length // seqlen
    shift = int(torch.randint(0, length - count * seqlen + 1, (1,), generator=g))
    return [shift + k * seqlen for k in range(count)]


def _not_enough(where: str, tokens: int, docs: int, found: int, n: int, seqlen: int, glue: bool) -> DataError:
    fix = ("use fewer or shorter windows (--nsamples/--seqlen, calibration.nsamples/seqlen) or more text" if glue
           else "use fewer or shorter windows (--nsamples/--seqlen, calibration.nsamples/seqlen) or more text; "
                "--glue (calibration.glue) lets windows span documents and --pad-short (calibration.pad_short) keeps "
                "short ones, padded")
    return DataError(f"{where} is too short for {n} x {seqlen} tokens: {tokens} tokens in {docs} documents give "
                     f"{found} windows. Fix: {fix}")


def _inside_documents(tokenizer, docs, n, seqlen, pad_short, g, where, chunk):
    """Windows that each lie inside one document: one per document in visiting order, then more per long one.

    Returns the rows and their (document, start) origins, and the number of documents read."""
    tokens: dict[int, list[int]] = {}
    slots: dict[int, list[int]] = {}
    picked: list[tuple[int, int]] = []
    with tqdm(total=n, desc="sampling windows", unit="window", leave=False) as bar:
        for d, ids in _tokenized(tokenizer, docs, lambda: min(chunk, n - len(picked))):
            tokens[d], slots[d] = ids, _slots(len(ids), seqlen, pad_short, g)
            if slots[d]:
                picked.append((d, slots[d][0]))
                bar.update(1)
            if len(picked) == n:
                break
        round_ = 1  # the documents ran out: further non-overlapping windows of the long ones, in visiting order
        while len(picked) < n and any(len(s) > round_ for s in slots.values()):
            for d, starts in slots.items():
                if len(starts) > round_ and len(picked) < n:
                    picked.append((d, starts[round_]))
                    bar.update(1)
            round_ += 1
    if len(picked) < n:
        found = sum(len(s) for s in slots.values())
        raise _not_enough(where, sum(len(t) for t in tokens.values()), len(tokens), found, n, seqlen, False)
    return [tokens[d][s:s + seqlen] for d, s in picked], picked, len(tokens)


def _glued(tokenizer, docs, n, seqlen, g, where, chunk):
    """Consecutive windows of the documents joined by EOS in visiting order, from a random offset."""
    eos = getattr(tokenizer, "eos_token_id", None)
    stream: list[int] = []
    read = 0
    for _, ids in _tokenized(tokenizer, docs, lambda: chunk):
        stream += ids + ([eos] if isinstance(eos, int) else [])
        read += 1
        if len(stream) >= (n + 1) * seqlen:  # enough for n windows after any offset
            break
    slack = min(seqlen - 1, len(stream) - n * seqlen)
    if slack < 0:
        raise _not_enough(where, len(stream), read, len(stream) // seqlen, n, seqlen, True)
    shift = int(torch.randint(0, slack + 1, (1,), generator=g))
    starts = [shift + k * seqlen for k in range(n)]
    return [stream[s:s + seqlen] for s in starts], [(-1, s) for s in starts], read


def _sample(tokenizer, docs: Iterator[tuple[int, str]], n: int, seqlen: int, g: torch.Generator, *, glue: bool,
            pad_short: bool, where: str, chunk: int):
    """(ids [N, T], mask [N, T], origins, documents read) of N windows drawn from documents in visiting order."""
    if glue:
        rows, origins, read = _glued(tokenizer, docs, n, seqlen, g, where, chunk)
    else:
        rows, origins, read = _inside_documents(tokenizer, docs, n, seqlen, pad_short, g, where, chunk)
    ids = torch.full((n, seqlen), pad_id(tokenizer), dtype=torch.long)
    mask = torch.zeros((n, seqlen), dtype=torch.long)
    for i, window in enumerate(rows):
        ids[i, :len(window)] = torch.tensor(window, dtype=torch.long)
        mask[i, :len(window)] = 1
    return ids, mask, tuple(origins), read


def _check_sizes(n: int, seqlen: int) -> None:
    if n < 1 or seqlen < 2:
        raise DataError(f"need nsamples >= 1 and seqlen >= 2, got {n} and {seqlen}")


def _identity(source_key: str, split: str | None, tokenizer, order: str, **sampling: Any) -> DataIdentity:
    settings = dict(sampling, order=order, sampler=SAMPLER_VERSION)
    return DataIdentity(source_key, split, tuple(sorted(settings.items())), tokenizer_fingerprint(tokenizer))


def sample_windows(tokenizer, corpus: Corpus, n: int, seqlen: int, *, seed: int = 0, glue: bool = False,
                   pad_short: bool = False, where: str = "data", chunk: int = 256) -> CalibrationSample:
    """N windows of T tokens from a corpus, documents visited in a seeded random permutation.

    Not glued: each window lies inside one document (one window per document first, further non-overlapping
    windows of long documents only if needed); pad_short=True also accepts documents shorter than T as one
    right-padded window (attention_mask 0 on the padding). Glued: the documents joined by the EOS token form
    one stream cut into consecutive windows from a random offset.
    """
    _check_sizes(n, seqlen)
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(corpus.documents), generator=g).tolist()
    visits = ((d, corpus.documents[d]) for d in order)
    ids, mask, origins, _ = _sample(tokenizer, visits, n, seqlen, g, glue=glue, pad_short=pad_short, where=where,
                                    chunk=chunk)
    identity = _identity(corpus.source_key, corpus.split, tokenizer, "permutation", glue=glue, n=n,
                         pad_short=pad_short, seed=seed, seqlen=seqlen)
    return CalibrationSample(ids, mask, origins, identity, len(corpus.documents))


def sample_stream(tokenizer, src: DataSource, n: int, seqlen: int, *, seed: int = 0, glue: bool = False,
                  pad_short: bool = False, buffer_size: int = SHUFFLE_BUFFER, chunk: int = 256
                  ) -> CalibrationSample:
    """N windows of T tokens from a streamed source: rows in a seeded shuffle-buffer order, read only as needed.

    Window rules as in `sample_windows`; origins name documents by their position in the shuffled stream."""
    from dynslice.datareader import open_split, shuffled_texts

    _check_sizes(n, seqlen)
    opened = open_split(src)
    g = torch.Generator().manual_seed(seed)
    visits = enumerate(text for text in shuffled_texts(opened, seed, buffer_size, SHUFFLE_SHARDS) if text.strip())
    ids, mask, origins, read = _sample(tokenizer, visits, n, seqlen, g, glue=glue, pad_short=pad_short,
                                       where=src.describe(), chunk=chunk)
    log.info("sampled %d windows from the first %d documents of a shuffled %s", n, read, src.describe())
    order = f"stream-shuffle(buffer={buffer_size},shards={SHUFFLE_SHARDS})"
    identity = _identity(opened.key, src.split, tokenizer, order, glue=glue, n=n,
                         pad_short=pad_short, seed=seed, seqlen=seqlen)
    return CalibrationSample(ids, mask, origins, identity, read)


def calibration_windows(source: str | os.PathLike, tokenizer, n: int, seqlen: int, *, split: str | None = None,
                        seed: int = 0, glue: bool = False, pad_short: bool = False, field: str | None = None,
                        cache_dir: str | os.PathLike | None = None, buffer_size: int = SHUFFLE_BUFFER
                        ) -> CalibrationSample:
    """Resolve, read and sample in one call (the default split is train); streamed sources read only what they need."""
    src = resolve_data(source, split, field=field, cache_dir=cache_dir)
    if src.samples_from_stream:
        return sample_stream(tokenizer, src, n, seqlen, seed=seed, glue=glue, pad_short=pad_short,
                             buffer_size=buffer_size)
    return sample_windows(tokenizer, load_corpus(src), n, seqlen, seed=seed, glue=glue, pad_short=pad_short,
                          where=src.describe())
