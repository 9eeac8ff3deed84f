"""Data through `datasets`: source strings resolve without reading, local folders and files, the Hugging Face hub
cache (offline) and S3 read through the `datasets` builders, errors name the missing split or field, data keys
follow content, and calibration windows are seeded, stay inside documents, and stream only what they need."""

import builtins
import gzip
import hashlib
import io
import json
import os
import shutil
from pathlib import Path

import datasets
import huggingface_hub
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from conftest import tiny_tokenizer
from dynslice.calibration import as_calibration
from dynslice.data import (Corpus, calibration_windows, data_key, default_eval_split, group_wikitext, load_corpus,
                           resolve_data, sample_windows, tokenizer_fingerprint)
from dynslice.datasources import format_spec, parse_spec
from dynslice.errors import DataError
from s3server import s3_server

# Character-level tokenizer (conftest): one token per character, so lengths below are len(text).
DOCS = [("alpha " * 12).strip(), "bravo charlie " * 9, "short", "delta echo foxtrot " * 7, "x" * 40]
COMMIT = "0123456789abcdef0123456789abcdef01234567"
OTHER_COMMIT = "fedcba9876543210fedcba9876543210fedcba98"


def _jsonl(docs, key="text") -> bytes:
    return "".join(json.dumps({key: d, "id": i}) + "\n" for i, d in enumerate(docs)).encode()


def _parquet(docs, key="text") -> bytes:
    out = io.BytesIO()
    pq.write_table(pa.table({key: list(docs)}), out)
    return out.getvalue()


@pytest.fixture
def jsonl(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_bytes(_jsonl(DOCS))
    return path


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """A Hugging Face hub cache on disk, laid out as huggingface_hub writes it, that the reader finds offline.

    Returns add(repo_id, {path in repo: bytes}, commit, ref): blobs/<sha256>, snapshots/<commit>/<path> linked to
    the blob, and refs/<ref> holding the commit."""
    root = tmp_path / "hf-hub"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(root))

    def add(repo_id: str, files: dict[str, bytes], commit: str = COMMIT, ref: str | None = "main") -> Path:
        repo = root / f"datasets--{repo_id.replace('/', '--')}"
        for name, data in files.items():
            blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
            blob.parent.mkdir(parents=True, exist_ok=True)
            blob.write_bytes(data)
            link = repo / "snapshots" / commit / name
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(os.path.relpath(blob, link.parent))
        if ref:
            (repo / "refs").mkdir(exist_ok=True)
            (repo / "refs" / ref).write_text(commit)
        return repo / "snapshots" / commit

    return add


def _card(configs: dict[str, dict[str, str]]) -> bytes:
    """A dataset card whose YAML declares configs: {config: {split: path pattern}}."""
    lines = ["---", "configs:"]
    for name, splits in configs.items():
        lines += [f"- config_name: {name}", "  data_files:"]
        lines += [f"  - split: {split}\n    path: {path}" for split, path in splits.items()]
    return ("\n".join(lines + ["---", "# a dataset", ""])).encode()


# -- the source string --------------------------------------------------------------------------------------------

def test_spec_options_parse_and_format_round_trip():
    location, options = parse_spec("HuggingFaceFW/fineweb-edu?config=sample-10BT&split=train&field=text")
    assert (location, options) == ("HuggingFaceFW/fineweb-edu", {"config": "sample-10BT", "split": "train",
                                                                 "field": "text"})
    assert parse_spec(format_spec(location, options)) == (location, options)
    with pytest.raises(DataError, match=r"unknown option 'subset'; options are config, split, field, revision"):
        parse_spec("org/name?subset=x")


def test_hub_ids_resolve_with_their_options_and_stream_by_default():
    src = resolve_data("HuggingFaceFW/fineweb-edu?config=sample-10BT&revision=v1.2")
    assert (src.kind, src.location, src.config, src.split, src.field, src.revision, src.streaming) == (
        "hub", "HuggingFaceFW/fineweb-edu", "sample-10BT", "train", "text", "v1.2", True)
    assert src.samples_from_stream
    # arguments fill in what the string leaves open; the string wins where it names a setting
    src = resolve_data("org/corpus?split=validation&streaming=false", "test", field="body")
    assert (src.split, src.field, src.streaming) == ("validation", "body", False)


@pytest.mark.parametrize("name, split, path, config, field, streaming", [
    ("wikitext2", "test", "Salesforce/wikitext", "wikitext-2-raw-v1", "text", False),
    ("wikitext-2-raw-v1", "train", "Salesforce/wikitext", "wikitext-2-raw-v1", "text", False),
    ("ptb", "test", "ptb-text-only/ptb_text_only", "penn_treebank", "sentence", False),
    ("c4", "validation", "allenai/c4", None, "text", True),
    ("pg19", "test", "deepmind/pg19", None, "text", True),
    ("alpaca", "train", "tatsu-lab/alpaca", None, "text", False),
])
def test_presets_name_the_papers_datasets(name, split, path, config, field, streaming):
    src = resolve_data(name, split)
    assert (src.kind, src.location, src.config, src.split, src.field, src.streaming) == (
        "hub", path, config, split, field, streaming)


def test_preset_details_and_eval_splits():
    assert dict(resolve_data("c4", "validation").recipe.data_files)["validation"] == (
        "en/c4-validation.00000-of-00008.json.gz")  # SliceGPT's shard
    assert resolve_data("alpaca", "test").recipe.holdout == (0.2, 42)  # SliceGPT's held-out 20%
    assert [default_eval_split(n) for n in ("wikitext2", "c4", "ptb", "wiki", "org/x", "org/x?split=dev")] == [
        "test", "validation", "test", "test", "test", "dev"]
    assert resolve_data("wikitext2").split == "train"  # calibration default
    assert resolve_data("wikitext2?split=validation").split == "validation"


def test_bad_names_splits_and_options_say_what_is_allowed(tmp_path):
    with pytest.raises(DataError, match=r"no such file or folder: wikitext3.*hub dataset id \(namespace/name\)"):
        resolve_data("wikitext3")
    with pytest.raises(DataError, match="has splits train, validation, not 'test'"):
        resolve_data("c4", "test")
    with pytest.raises(DataError, match="read whole"):
        resolve_data("wikitext2?streaming=true")
    with pytest.raises(DataError, match="sample_by must be one of document, paragraph, line"):
        resolve_data("org/x?sample_by=word")
    (tmp_path / "a.xyz").write_text("x")
    with pytest.raises(DataError, match="unsupported file type"):
        resolve_data(tmp_path / "a.xyz")
    with pytest.raises(DataError, match="no such file"):
        resolve_data(str(tmp_path / "missing.jsonl"))


# -- local folders and files through `datasets` --------------------------------------------------------------------

def test_json_and_parquet_folders_load_their_splits(tmp_path):
    json_folder, parquet_folder = tmp_path / "json", tmp_path / "parquet" / "data"
    json_folder.mkdir()
    parquet_folder.mkdir(parents=True)
    (json_folder / "train.jsonl").write_bytes(_jsonl(DOCS))
    (json_folder / "test.jsonl").write_bytes(_jsonl(["held out text"]))
    # the layout `push_to_hub` writes: data/{split}-00000-of-00001.parquet
    (parquet_folder / "train-00000-of-00001.parquet").write_bytes(_parquet(DOCS))
    (parquet_folder / "test-00000-of-00001.parquet").write_bytes(_parquet(["held out text"]))
    for folder in (json_folder, tmp_path / "parquet"):
        assert load_corpus(resolve_data(folder)).documents == tuple(DOCS)  # train by default
        held_out = load_corpus(resolve_data(folder, "test"))
        assert (held_out.documents, held_out.eval_text, held_out.split) == (("held out text",), "held out text",
                                                                            "test")
        with pytest.raises(DataError, match=r"no split 'validation' \(splits: train, test\)"):
            load_corpus(resolve_data(folder, "validation"))


def test_folder_with_configs_reads_the_named_one(tmp_path):
    folder = tmp_path / "corpus"
    (folder / "en").mkdir(parents=True)
    (folder / "fr").mkdir()
    (folder / "README.md").write_bytes(_card({"en": {"train": "en/*.jsonl"}, "fr": {"train": "fr/*.jsonl"}}))
    (folder / "en" / "a.jsonl").write_bytes(_jsonl(["hello world"]))
    (folder / "fr" / "a.jsonl").write_bytes(_jsonl(["bonjour le monde"]))
    assert load_corpus(resolve_data(f"{folder}?config=fr")).documents == ("bonjour le monde",)
    with pytest.raises(DataError, match=r"several configs and no default; name one with \?config=NAME "
                                        r"\(configs: en, fr\)"):
        load_corpus(resolve_data(folder))
    with pytest.raises(DataError, match="no config 'de'"):
        load_corpus(resolve_data(folder, config="de"))


def test_file_kinds_read_the_same_documents(tmp_path, jsonl):
    (tmp_path / "docs.parquet").write_bytes(_parquet(DOCS, key="body"))
    (tmp_path / "docs.json").write_text(json.dumps([{"text": d} for d in DOCS]))  # one JSON array
    (tmp_path / "docs.jsonl.gz").write_bytes(gzip.compress(_jsonl(DOCS)))
    (tmp_path / "docs.txt").write_text("\n\n".join(DOCS))
    assert load_corpus(resolve_data(jsonl)).documents == tuple(DOCS)
    assert data_key(resolve_data(jsonl)) == load_corpus(resolve_data(jsonl)).source_key
    assert load_corpus(resolve_data(tmp_path / "docs.json")).documents == tuple(DOCS)
    assert load_corpus(resolve_data(tmp_path / "docs.jsonl.gz")).documents == tuple(DOCS)
    assert load_corpus(resolve_data(tmp_path / "docs.parquet", field="body")).documents == tuple(DOCS)
    assert load_corpus(resolve_data(f"{tmp_path / 'docs.txt'}?sample_by=paragraph")).documents == tuple(DOCS)
    whole = load_corpus(resolve_data(tmp_path / "docs.txt"))  # a text file is one document by default
    assert len(whole.documents) == 1 and whole.eval_text == "\n\n".join(DOCS).strip()
    assert resolve_data(jsonl, "test").split is None  # a single file is its own split


def test_missing_field_names_the_field_and_the_columns(tmp_path):
    (tmp_path / "docs.parquet").write_bytes(_parquet(DOCS, key="body"))
    with pytest.raises(DataError, match=r"docs.parquet: split 'train' has no field 'text' \(columns: body\); "
                                        r"name the text column with \?field=NAME"):
        load_corpus(resolve_data(tmp_path / "docs.parquet"))
    (tmp_path / "a.jsonl").write_text('{"body": "x"}\n')
    with pytest.raises(DataError, match=r"has no field 'content' \(columns: body\)"):
        load_corpus(resolve_data(f"{tmp_path / 'a.jsonl'}?field=content"))


def test_demo_reads_offline_from_the_cache(tmp_path):
    with pytest.raises(DataError, match="dynslice assets fetch"):
        resolve_data("wiki", cache_dir=tmp_path)
    wiki = tmp_path / "data" / "wiki"
    wiki.mkdir(parents=True)
    for split in ("train", "validation", "test"):
        (wiki / f"{split}.jsonl").write_bytes(_jsonl([f"{split} article one", f"{split} article two"]))
    corpus = load_corpus(resolve_data("wiki", default_eval_split("wiki"), cache_dir=tmp_path))
    assert corpus.documents == ("test article one", "test article two")
    assert corpus.eval_text == "test article one\n\ntest article two"
    assert resolve_data("wiki", cache_dir=tmp_path).describe() == "wiki [train]"


def test_tests_keep_the_datasets_cache_out_of_home():
    assert not Path(datasets.config.HF_DATASETS_CACHE).resolve().is_relative_to(Path.home().resolve())


# -- hub datasets, offline, from the Hugging Face hub cache ------------------------------------------------------

def test_hub_dataset_loads_offline_by_its_id(hub_cache):
    hub_cache("acme/tiny-corpus", {
        "README.md": _card({"default": {"train": "data/train-*", "test": "data/test-*"},
                            "shouty": {"train": "shouty/*.jsonl"}}),
        "data/train-00000-of-00002.parquet": _parquet(DOCS[:3]),
        "data/train-00001-of-00002.parquet": _parquet(DOCS[3:]),
        "data/test-00000-of-00001.parquet": _parquet(["held out"]),
        "shouty/train.jsonl": _jsonl([d.upper() for d in DOCS], key="words"),
    })
    src = resolve_data("acme/tiny-corpus?streaming=false")
    corpus = load_corpus(src)
    assert corpus.documents == tuple(DOCS)  # both shards, in order
    assert corpus.eval_text == "\n\n".join(DOCS)  # hub rows joined as they are
    assert corpus.source_key == f"hub:acme/tiny-corpus?field=text&revision={COMMIT}&split=train"
    assert data_key(src) == corpus.source_key  # the same key without reading the rows
    shouty = load_corpus(resolve_data("acme/tiny-corpus?config=shouty&field=words"))
    assert shouty.documents == tuple(d.upper() for d in DOCS)
    assert shouty.source_key == f"hub:acme/tiny-corpus?config=shouty&field=words&revision={COMMIT}&split=train"
    assert load_corpus(resolve_data("acme/tiny-corpus", "test")).source_key.endswith("&split=test")


def test_hub_revision_picks_the_snapshot(hub_cache):
    card = _card({"default": {"train": "train.jsonl"}})
    hub_cache("acme/versions", {"README.md": card, "train.jsonl": _jsonl(["version one"])}, COMMIT, ref="main")
    hub_cache("acme/versions", {"README.md": card, "train.jsonl": _jsonl(["version two"])}, OTHER_COMMIT,
              ref="v2")
    assert load_corpus(resolve_data("acme/versions")).documents == ("version one",)
    v2 = load_corpus(resolve_data("acme/versions?revision=v2"))
    by_commit = load_corpus(resolve_data("acme/versions", revision=OTHER_COMMIT))
    assert v2.documents == by_commit.documents == ("version two",)
    assert v2.source_key == by_commit.source_key  # the key pins the commit, however it was named
    assert OTHER_COMMIT in v2.source_key


def test_partial_hub_snapshot_serves_what_it_holds(hub_cache):
    """What a run of `load_dataset("Salesforce/wikitext", "wikitext-2-raw-v1", split="test")` leaves in the
    cache: the card of all configs, and the files of the one config it downloaded."""
    rows = ["", " = Alpha = \n", "", " alpha text \n", " = = History = = \n", " more \n", " = Beta = \n", " b \n"]
    configs = {c: {s: f"{c}/{s}-*" for s in ("train", "validation", "test")}
               for c in ("wikitext-103-raw-v1", "wikitext-2-raw-v1")}
    hub_cache("Salesforce/wikitext", {"README.md": _card(configs),
                                      "wikitext-2-raw-v1/test-00000-of-00001.parquet": _parquet(rows)})
    corpus = load_corpus(resolve_data("wikitext2", default_eval_split("wikitext2")))
    assert corpus.eval_text == "\n\n".join(rows)  # SliceGPT's "\n\n".join(test["text"])
    assert corpus.documents == tuple(group_wikitext(rows))
    assert corpus.source_key == (f"hub:Salesforce/wikitext?config=wikitext-2-raw-v1&field=text&layout=wikitext"
                                 f"&revision={COMMIT}&split=test")
    with pytest.raises(DataError, match=r"the files of split 'train' \(wikitext-2-raw-v1/train-\*\) are not in"):
        load_corpus(resolve_data("wikitext2", "train"))


def test_hub_errors_name_the_dataset_split_and_field(hub_cache):
    hub_cache("acme/tiny-corpus", {"README.md": _card({"default": {"train": "train.jsonl"}}),
                                   "train.jsonl": _jsonl(DOCS, key="body")})
    with pytest.raises(DataError, match=r"acme/tiny-corpus \[validation\]: no split 'validation' \(splits: train\)"):
        load_corpus(resolve_data("acme/tiny-corpus", "validation"))
    with pytest.raises(DataError, match=r"acme/tiny-corpus \[train\]: split 'train' has no field 'text' "
                                        r"\(columns: body, id\)"):
        load_corpus(resolve_data("acme/tiny-corpus"))
    with pytest.raises(DataError, match=r"acme/elsewhere.*not in the Hugging Face cache.*Hub is offline.*"
                                        r"hf download --repo-type dataset acme/elsewhere"):
        load_corpus(resolve_data("acme/elsewhere"))


# -- streaming: seeded, and reading only what it needs -------------------------------------------------------------

def _big_hub_corpus(hub_cache, shards=40, per_shard=50):
    files = {"README.md": _card({"default": {"train": "data/shard-*.jsonl"}})}
    for s in range(shards):
        files[f"data/shard-{s:03d}.jsonl"] = _jsonl([f"shard {s:03d} doc {i:02d} " * 3 for i in range(per_shard)])
    hub_cache("acme/big-corpus", files)


def test_streamed_sampling_reads_only_what_it_needs(hub_cache, monkeypatch):
    _big_hub_corpus(hub_cache)
    opened: list[str] = []
    real_open = builtins.open

    def spy(file, *args, **kwargs):
        opened.append(os.fspath(file) if isinstance(file, (str, os.PathLike)) else "")
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", spy)
    sample = calibration_windows("acme/big-corpus", tiny_tokenizer(), 4, 16, seed=0, buffer_size=8)
    monkeypatch.undo()
    shards = {Path(f).name for f in opened if "shard-" in f}
    # 4 windows from a buffer of 8 rows fed by up to 10 shards at a time: at most 10 of the 40 shards are opened,
    # plus the first one, whose first block the `datasets` JSON builder reads for the schema; and only 4
    # documents are taken from the shuffled stream
    assert 1 <= len(shards) <= 11
    assert sample.num_documents == 4 and sample.input_ids.shape == (4, 16)
    assert dict(sample.identity.sampling)["order"] == "stream-shuffle(buffer=8,shards=10)"
    assert sample.identity.source == f"hub:acme/big-corpus?field=text&revision={COMMIT}&split=train"


def test_streamed_sampling_is_deterministic_for_a_seed(hub_cache):
    _big_hub_corpus(hub_cache, shards=6, per_shard=20)
    tok = tiny_tokenizer()
    a = calibration_windows("acme/big-corpus", tok, 6, 16, seed=3, buffer_size=16)
    b = calibration_windows("acme/big-corpus", tok, 6, 16, seed=3, buffer_size=16)
    c = calibration_windows("acme/big-corpus", tok, 6, 16, seed=4, buffer_size=16)
    assert torch.equal(a.input_ids, b.input_ids) and a.identity == b.identity
    assert not torch.equal(a.input_ids, c.input_ids) and a.identity.key != c.identity.key
    whole = calibration_windows("acme/big-corpus?streaming=false", tok, 6, 16, seed=3)
    assert dict(whole.identity.sampling)["order"] == "permutation" and whole.identity.key != a.identity.key


# -- remote files --------------------------------------------------------------------------------------------------

def test_s3_file_and_folder_read_like_the_local_ones(jsonl, tmp_path, monkeypatch):
    monkeypatch.setenv("DYNSLICE_CACHE", str(tmp_path / "cache"))  # where remote files are copied
    tok = tiny_tokenizer()
    with s3_server(monkeypatch) as (fs, bucket):
        fs.put(str(jsonl), f"{bucket}/data/docs.jsonl")
        fs.put(str(jsonl), f"{bucket}/data/folder/train.jsonl")
        remote = load_corpus(resolve_data(f"s3://{bucket}/data/docs.jsonl"))
        assert remote.documents == tuple(DOCS)
        assert remote.source_key == load_corpus(resolve_data(jsonl)).source_key  # content, not location
        assert load_corpus(resolve_data(f"s3://{bucket}/data/folder")).documents == tuple(DOCS)
        remote_sample = calibration_windows(f"s3://{bucket}/data/docs.jsonl", tok, 3, 16, seed=1)
    assert remote_sample.identity.key == calibration_windows(jsonl, tok, 3, 16, seed=1).identity.key
    # the remote files were copied once each, into a folder named by their content
    copies = list((tmp_path / "cache" / "data" / "remote").rglob("*.jsonl"))
    assert sorted(p.name for p in copies) == ["docs.jsonl", "train.jsonl"]
    assert {p.parent.name for p in copies} == {hashlib.sha256(jsonl.read_bytes()).hexdigest()}


# -- sampling ------------------------------------------------------------------------------------------------------

def _corpus(docs=DOCS) -> Corpus:
    return Corpus(tuple(docs), "\n\n".join(docs), "sha256:test", None)


def test_sampling_is_deterministic_for_a_seed():
    tok = tiny_tokenizer()
    a = sample_windows(tok, _corpus(), 4, 16, seed=7)
    b = sample_windows(tok, _corpus(), 4, 16, seed=7)
    c = sample_windows(tok, _corpus(), 4, 16, seed=8)
    assert torch.equal(a.input_ids, b.input_ids) and a.identity == b.identity
    assert not torch.equal(a.input_ids, c.input_ids)
    assert a.identity.key != c.identity.key


def test_windows_stay_inside_one_document():
    tok = tiny_tokenizer()
    sample = sample_windows(tok, _corpus(), 6, 16, seed=0)
    assert sample.input_ids.shape == (6, 16) and bool(sample.attention_mask.all())
    assert len(set(sample.origins)) == 6  # never the same window twice
    for row, (doc, start) in zip(sample.input_ids, sample.origins):
        doc_ids = tok(DOCS[doc], add_special_tokens=False).input_ids
        assert row.tolist() == doc_ids[start:start + 16]
    # one window per document first: the six windows come from at least 4 different documents
    assert len({d for d, _ in sample.origins}) >= 4


def test_short_documents_are_padded_only_with_a_mask():
    tok = tiny_tokenizer()
    sample = sample_windows(tok, _corpus(), 5, 64, seed=0, pad_short=True)  # 2 of the 5 documents are < 64
    assert not bool(sample.attention_mask.all())  # one window per document first: the short ones are in
    for row, mask, (doc, start) in zip(sample.input_ids, sample.attention_mask, sample.origins):
        real = min(64, len(DOCS[doc]) - start)
        assert mask.tolist() == [1] * real + [0] * (64 - real)  # a prefix of ones, then zeros
        assert set(row[real:].tolist()) <= {tok.pad_token_id}
    assert int(as_calibration(sample.as_dict()).attention_mask.sum()) == sum(map(int, sample.attention_mask.sum(1)))


def test_glued_windows_cross_documents_only_when_asked():
    tok = tiny_tokenizer()
    # 375 characters in all, but only 2 documents hold 80 (char-level tokens)
    with pytest.raises(DataError, match="too short for 4 x 80"):
        sample_windows(tok, _corpus(), 4, 80, seed=0)
    sample = sample_windows(tok, _corpus(), 4, 80, seed=0, glue=True)
    assert sample.input_ids.shape == (4, 80) and bool(sample.attention_mask.all())
    assert all(doc == -1 for doc, _ in sample.origins)
    starts = [s for _, s in sample.origins]
    assert starts == [starts[0] + 80 * k for k in range(4)]  # consecutive windows of one glued stream
    assert dict(sample.identity.sampling)["glue"] is True


def test_too_short_names_sizes_and_fixes(tmp_path):
    (tmp_path / "tiny.txt").write_text("only a few words here")
    with pytest.raises(DataError, match=r"too short for 8 x 32 tokens: 21 tokens in 1 documents give 0 windows"
                                        r".*--glue.*--pad-short"):
        calibration_windows(tmp_path / "tiny.txt", tiny_tokenizer(), 8, 32)
    with pytest.raises(DataError, match="more text"):
        calibration_windows(tmp_path / "tiny.txt", tiny_tokenizer(), 8, 32, glue=True)


def test_data_identity_covers_source_split_sampling_tokenizer(tmp_path, jsonl):
    tok = tiny_tokenizer()
    base = calibration_windows(jsonl, tok, 3, 16, seed=1).identity
    copy = tmp_path / "elsewhere" / "copy.jsonl"
    copy.parent.mkdir()
    shutil.copy(jsonl, copy)
    assert calibration_windows(copy, tok, 3, 16, seed=1).identity.key == base.key  # same bytes, same key
    assert calibration_windows(jsonl, tok, 3, 12, seed=1).identity.key != base.key
    (tmp_path / "both.jsonl").write_text("".join(json.dumps({"text": d, "alt": d[::-1]}) + "\n" for d in DOCS))
    both = tmp_path / "both.jsonl"
    assert (load_corpus(resolve_data(both)).source_key != load_corpus(resolve_data(both, field="alt")).source_key)
    other_tok = tiny_tokenizer()
    other_tok.add_tokens(["<new>"])
    assert tokenizer_fingerprint(other_tok) != tokenizer_fingerprint(tok)
    assert calibration_windows(jsonl, other_tok, 3, 16, seed=1).identity.key != base.key
    assert set(base.to_dict()) == {"source", "split", "sampling", "tokenizer", "key"}
