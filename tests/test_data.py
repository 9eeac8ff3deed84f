"""The data resolver and calibration sampling: names resolve without downloads, every file kind reads,
windows are seeded, stay inside documents, and mask their padding."""

import json
import shutil

import pytest
import torch

from conftest import tiny_tokenizer
from dynslice.calibration import as_calibration
from dynslice.data import (Corpus, calibration_windows, default_eval_split, group_wikitext, load_corpus,
                           resolve_data, sample_windows, tokenizer_fingerprint)
from dynslice.errors import DataError
from s3server import s3_server

# Character-level tokenizer (conftest): one token per character, so lengths below are len(text).
DOCS = [("alpha " * 12).strip(), "bravo charlie " * 9, "short", "delta echo foxtrot " * 7, "x" * 40]


@pytest.fixture
def jsonl(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": d, "id": i}) + "\n" for i, d in enumerate(DOCS)))
    return path


# -- hub names: the table, checked without any download ----------------------------------------------------

@pytest.mark.parametrize("name, split, path, config, field", [
    ("wikitext2", "test", "Salesforce/wikitext", "wikitext-2-raw-v1", "text"),
    ("wikitext-2-raw-v1", "train", "Salesforce/wikitext", "wikitext-2-raw-v1", "text"),
    ("ptb", "test", "ptb-text-only/ptb_text_only", "penn_treebank", "sentence"),
    ("c4", "validation", "allenai/c4", None, "text"),
    ("pg19", "test", "deepmind/pg19", None, "text"),
    ("alpaca", "train", "tatsu-lab/alpaca", None, "text"),
])
def test_hub_names_resolve_to_dataset_and_config(name, split, path, config, field):
    src = resolve_data(name, split)
    assert (src.kind, src.location, src.hub.name, src.split, src.field) == ("hub", path, config, split, field)


def test_hub_details_papers_depend_on():
    c4 = resolve_data("c4", "validation").hub
    assert dict(c4.data_files)["validation"] == "en/c4-validation.00000-of-00008.json.gz"  # SliceGPT's shard
    assert resolve_data("alpaca", "test").hub.holdout == (0.2, 42)  # SliceGPT's held-out 20%
    assert [default_eval_split(n) for n in ("wikitext2", "c4", "ptb", "wiki")] == ["test", "validation", "test",
                                                                                   "test"]
    assert resolve_data("wikitext2").split == "train"  # calibration default


def test_unknown_name_and_split_name_the_choices():
    with pytest.raises(DataError, match=r"unknown dataset 'wikitext3'.*alpaca, c4, pg19, ptb, wikitext2"):
        resolve_data("wikitext3")
    with pytest.raises(DataError, match="has splits train, validation"):
        resolve_data("c4", "test")


def test_hub_offline_says_what_to_do():
    pytest.importorskip("datasets")
    with pytest.raises(DataError, match="local .txt/.jsonl/.parquet file"):
        load_corpus(resolve_data("wikitext2", "test"))  # conftest sets HF_DATASETS_OFFLINE=1


def test_wikitext_rows_group_into_articles():
    rows = ["", " = Alpha = \n", "", " = = History = = \n", " text a \n", " = Beta = \n", " text b \n"]
    assert group_wikitext(rows) == ["= Alpha = \n = = History = = \n text a", "= Beta = \n text b"]


# -- local files and URIs ------------------------------------------------------------------------------------

def test_file_kinds_read_the_same_documents(tmp_path, jsonl):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"body": DOCS}), tmp_path / "docs.parquet")
    (tmp_path / "docs.txt").write_text("<|sep|>".join(DOCS))
    assert load_corpus(resolve_data(jsonl)).documents == tuple(DOCS)
    assert load_corpus(resolve_data(tmp_path / "docs.parquet", field="body")).documents == tuple(DOCS)
    assert load_corpus(resolve_data(tmp_path / "docs.txt", separator="<|sep|>")).documents == tuple(DOCS)
    assert load_corpus(resolve_data(tmp_path / "docs.txt")).documents == ("<|sep|>".join(DOCS),)
    with pytest.raises(DataError, match="no column 'text'.*--field"):
        load_corpus(resolve_data(tmp_path / "docs.parquet"))


def test_folder_picks_the_split_file(tmp_path, jsonl):
    folder = tmp_path / "corpus"
    folder.mkdir()
    shutil.copy(jsonl, folder / "train.jsonl")
    (folder / "test.txt").write_text("held out text")
    assert resolve_data(folder).location.endswith("train.jsonl")
    assert load_corpus(resolve_data(folder, "test")).documents == ("held out text",)
    with pytest.raises(DataError, match="no validation.jsonl"):
        resolve_data(folder, "validation")


def test_bad_files_name_the_fix(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"body": "x"}\n')
    with pytest.raises(DataError, match=r"no 'text' field \(has \['body'\]\); pass --field"):
        load_corpus(resolve_data(tmp_path / "a.jsonl"))
    (tmp_path / "a.csv").write_text("x")
    with pytest.raises(DataError, match="unsupported file type"):
        resolve_data(tmp_path / "a.csv")
    with pytest.raises(DataError, match="no such file"):
        resolve_data(tmp_path / "missing.jsonl")


def test_demo_data_missing_says_fetch(tmp_path):
    with pytest.raises(DataError, match="dynslice assets fetch"):
        resolve_data("wiki", cache_dir=tmp_path)


def test_s3_jsonl_reads_like_the_local_file(jsonl, monkeypatch):
    with s3_server(monkeypatch) as (fs, bucket):
        fs.put(str(jsonl), f"{bucket}/data/docs.jsonl")
        fs.put(str(jsonl), f"{bucket}/data/folder/train.jsonl")
        remote = load_corpus(resolve_data(f"s3://{bucket}/data/docs.jsonl"))
        assert remote.documents == tuple(DOCS)
        assert remote.source_key == load_corpus(resolve_data(jsonl)).source_key  # content, not location
        assert resolve_data(f"s3://{bucket}/data/folder").location.endswith("folder/train.jsonl")


# -- sampling ------------------------------------------------------------------------------------------------

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
    copy = tmp_path / "copy.jsonl"
    shutil.copy(jsonl, copy)
    assert calibration_windows(copy, tok, 3, 16, seed=1).identity.key == base.key  # same bytes, same key
    assert calibration_windows(jsonl, tok, 3, 12, seed=1).identity.key != base.key
    other_tok = tiny_tokenizer()
    other_tok.add_tokens(["<new>"])
    assert tokenizer_fingerprint(other_tok) != tokenizer_fingerprint(tok)
    assert calibration_windows(jsonl, other_tok, 3, 16, seed=1).identity.key != base.key
    assert set(base.to_dict()) == {"source", "split", "sampling", "tokenizer", "key"}
