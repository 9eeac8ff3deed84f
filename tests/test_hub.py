"""Publishing to the Hub: the card parses and tells the truth, the upload is exactly the model plus README.md,
bad input is refused before any Hub call, and the token never lands in a file. No network: HfApi is mocked."""

import json
import shutil
from pathlib import Path
from unittest.mock import create_autospec

import httpx
import huggingface_hub
import pytest
import torch
from huggingface_hub import CommitInfo, CommitOperationAdd, CommitOperationDelete, HfApi, ModelCard
from huggingface_hub.errors import HfHubHTTPError

import dynslice
from conftest import calibration, param_count, tiny_model, tiny_tokenizer, uneven_plan
from dynslice import cli, hub
from dynslice.config import CompressConfig
from dynslice.store import ArtifactStore

TOKEN = "hf_dynsliceTestTokenNeverWritten0123456789"
COMMIT_URL = "https://huggingface.co/me/tiny-sliced/commit/0123abcd"


@pytest.fixture(scope="module")
def sliced(tmp_path_factory):
    """A tiny Llama sliced with uneven widths and saved with its tokenizer; (folder, dense, sliced counts)."""
    model = tiny_model("llama", dtype=torch.float32)
    dense = param_count(model)
    dynslice.slice_model(model, calibration(), uneven_plan(model.config), progress=False)
    folder = tmp_path_factory.mktemp("sliced")
    dynslice.save_sliced(model, folder, tokenizer=tiny_tokenizer())
    return folder, dense, param_count(model)


def _summary(folder: Path, dense: int, sliced: int, source: str = "HuggingFaceTB/SmolLM2-135M",
             kind: str = "hub") -> dict:
    """summary.json as the compress flow's publish step writes it (config dump + each stage's result)."""
    meta = json.loads((folder / "config.json").read_text())["dynslice"]
    config = CompressConfig.model_validate({"model": {"source": source}}).model_dump()
    evaluation = lambda n, ppl, acc: {"parameters": n, "perplexity": ppl, "accuracy": acc,  # noqa: E731
                                      "accuracy_norm": acc + 0.01, "tasks": ["mmlu_exemplars"]}
    results = {
        "capture": {"model": {"kind": kind, "source": source, "revision": "c0ffee" if kind == "hub" else None},
                    "num_tokens": 96},
        "plan": {"planner": "dynamic", "target": 0.25, "variation": 0.125, "budget": "mean", "round_to": 4,
                 "widths": meta["widths"], "mid": meta["mid"]},
        "slice": {"parameters": sliced, "dense_parameters": dense, "param_reduction": 1 - sliced / dense,
                  "widths": meta["widths"]},
        "dense_eval": evaluation(dense, 12.345, 0.4321),
        "sliced_eval": evaluation(sliced, 15.678, 0.3987),
    }
    return {"config": config, "results": results, "artifacts": {}}


def _export_run(store_uri: str, folder: Path, summary: dict, run: str = "tiny-run") -> str:
    """A run folder written the way the flow writes it (ArtifactStore.export: files, then MANIFEST.json)."""
    files = {f"model/{p.name}": str(p) for p in sorted(folder.iterdir()) if p.is_file()}
    files["summary.json"] = json.dumps(summary).encode()
    files["report.md"] = b"# report\n"
    return ArtifactStore(store_uri).export(run, files)


def _api(existing: list[str] | None = None):
    """A mocked HfApi; `api.sent` records what each commit would upload, read while the commit runs (a remote
    run's files live in a temporary folder that is gone once push returns)."""
    api = create_autospec(HfApi, instance=True)
    api.list_repo_files.return_value = existing if existing is not None else [".gitattributes"]
    api.sent = {}

    def commit(repo_id, operations, **kwargs):
        for op in operations:
            if isinstance(op, CommitOperationAdd):
                with op.as_file() as f:
                    api.sent[op.path_in_repo] = f.read()
        return CommitInfo(commit_url=COMMIT_URL, commit_message=kwargs["commit_message"], commit_description="",
                          oid="0123abcd")

    api.create_commit.side_effect = commit
    return api


def _operations(api) -> list:
    (_, operations), _ = api.create_commit.call_args
    return list(operations)


# -- the card -------------------------------------------------------------------------------------------------

def test_card_parses_and_names_the_base_model(sliced, tmp_path):
    folder, dense, n = sliced
    copy = shutil.copytree(folder, tmp_path / "model")
    path = hub.write_card(copy, _summary(folder, dense, n), repo_id="me/tiny-sliced")
    card = ModelCard.load(path)
    assert card.data.base_model == "HuggingFaceTB/SmolLM2-135M"
    assert card.data.library_name == "transformers" and card.data.pipeline_tag == "text-generation"
    assert {"dynslice", "sliced", "slicegpt", "llama"} <= set(card.data.tags)
    text = card.text
    widths = json.loads((folder / "config.json").read_text())["dynslice"]["widths"]
    assert f"| 0 | {widths[0]} |" in text  # the per-layer widths table
    assert "| perplexity | 12.345 | 15.678 |" in text  # dense against sliced, from the run's results
    assert "0.4321" in text and "0.3987" in text
    assert f"{n:,}" in text and f"{dense:,}" in text
    assert 'AutoModelForCausalLM.from_pretrained("me/tiny-sliced", trust_remote_code=True)' in text
    assert "dynslice.load_sliced" in text
    assert "@inproceedings{dumitru2024change" in text and "@inproceedings{ashkboos2024slicegpt" in text
    assert "2411.03513" in text and "2401.15024" in text
    assert "Wikipedia" in text and "96 tokens" in text  # calibration: the demo wiki sample
    assert "Base model revision: `c0ffee`" in text


def test_card_says_so_when_the_model_grew(sliced):
    folder, _, n = sliced
    # the tiny tied Llama grows once its head is untied and shortcuts are added: state it, do not hide it
    summary = _summary(folder, n - 500, n)
    text = hub.model_card(folder, summary).text
    assert "more parameters than the dense model" in text and "not smaller" in text
    fewer = hub.model_card(folder, _summary(folder, n + 1000, n)).text
    assert "fewer parameters" in fewer and "more parameters than the dense" not in fewer


@pytest.mark.parametrize("source, kind, expected", [
    ("smollm2-135m", "demo", "HuggingFaceTB/SmolLM2-135M-Instruct"),  # demo names map to their upstream model
    ("/home/someone/models/llama", "folder", None),  # a local folder is no hub id, and its path is not shown
    ("s3://bucket/models/llama", "uri", None),
])
def test_base_model_only_when_it_is_a_hub_id(sliced, source, kind, expected):
    folder, dense, n = sliced
    summary = _summary(folder, dense, n, source=source, kind=kind)
    summary["config"]["calibration"]["source"] = "/home/someone/calib.txt"
    summary["config"]["evaluation"]["ppl"] = "/home/someone/eval.txt"
    card = hub.model_card(folder, summary)
    assert card.data.base_model == expected
    # a card is public: local paths (a user's home) and bucket URIs are shown by their last part only
    assert "/home/someone" not in card.content and "s3://bucket" not in card.content
    assert ".../calib.txt" in card.content and ".../eval.txt" in card.content


def test_card_without_a_summary_reads_the_folder_alone(sliced, tmp_path):
    folder, _, n = sliced
    copy = shutil.copytree(folder, tmp_path / "model")
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps(dict(config, _name_or_path="org/dense-model")))
    card = ModelCard.load(hub.write_card(copy))
    assert card.data.base_model == "org/dense-model"
    assert f"Parameters: **{n:,}**" in card.text and "not recorded" in card.text


# -- push -----------------------------------------------------------------------------------------------------

def test_push_uploads_exactly_the_folder_plus_readme(sliced):
    folder, _, _ = sliced
    api = _api()
    assert hub.push(folder, "me/tiny-sliced", api=api) == COMMIT_URL
    api.create_repo.assert_called_once()
    assert api.create_repo.call_args.kwargs["exist_ok"] is True
    uploaded = api.sent
    names = {p.name for p in folder.iterdir() if p.is_file()}
    assert set(uploaded) == names | {"README.md"}
    for name in names:  # byte for byte what save_sliced wrote
        assert uploaded[name] == (folder / name).read_bytes()
    assert ModelCard(uploaded["README.md"].decode()).data.tags[0] == "dynslice"
    assert not (folder / "README.md").exists()  # the source folder is left as it was


@pytest.mark.parametrize("where", ["local", "file", "memory"])
def test_push_a_run_folder(sliced, tmp_path, where):
    folder, dense, n = sliced
    store = {"local": str(tmp_path / "store"), "file": f"file://{tmp_path}/store",
             "memory": f"memory://hub-test-{tmp_path.name}/store"}[where]
    url = _export_run(store, folder, _summary(folder, dense, n))
    api = _api()
    hub.push(url, "me/tiny-sliced", api=api, revision="v1", commit_message="first")
    uploaded = api.sent
    assert set(uploaded) == {p.name for p in folder.iterdir() if p.is_file()} | {"README.md"}
    assert "report.md" not in uploaded and "summary.json" not in uploaded
    assert "| perplexity | 12.345 | 15.678 |" in uploaded["README.md"].decode()
    api.create_branch.assert_called_once()
    assert api.create_commit.call_args.kwargs["revision"] == "v1"
    assert api.create_commit.call_args.kwargs["commit_message"] == "first"


def test_push_removes_stale_weights_of_an_earlier_push(sliced):
    folder, _, _ = sliced
    # an earlier sharded push: its index would otherwise sit next to the new model.safetensors
    api = _api([".gitattributes", "model-00001-of-00002.safetensors", "model.safetensors.index.json",
                "model.safetensors", "notes.md"])
    hub.push(folder, "me/tiny-sliced", api=api)
    deleted = {op.path_in_repo for op in _operations(api) if isinstance(op, CommitOperationDelete)}
    assert deleted == {"model-00001-of-00002.safetensors", "model.safetensors.index.json"}


def test_token_is_used_but_never_written_or_logged(sliced, tmp_path, monkeypatch, caplog):
    folder, dense, n = sliced
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    url = _export_run(str(tmp_path / "store"), folder, _summary(folder, dense, n))
    api = _api()
    with caplog.at_level("DEBUG"):
        hub.push(url, "me/tiny-sliced", token=TOKEN, api=api)
    assert api.create_commit.call_args.kwargs["token"] == TOKEN
    for name, data in api.sent.items():
        assert TOKEN.encode() not in data, name
    assert TOKEN not in caplog.text
    assert not [p for p in tmp_path.rglob("*") if p.is_file() and TOKEN.encode() in p.read_bytes()]


# -- refusals: before any Hub call ------------------------------------------------------------------------------

def test_a_dense_folder_is_refused(tmp_path):
    tiny_model("llama").save_pretrained(tmp_path / "dense")
    api = _api()
    with pytest.raises(hub.HubError, match="not a dynslice sliced model"):
        hub.push(tmp_path / "dense", "me/tiny-sliced", api=api)
    with pytest.raises(hub.HubError, match="no config.json"):
        hub.push(tmp_path, "me/tiny-sliced", api=api)
    assert api.method_calls == []


@pytest.mark.parametrize("repo_id", ["me/tiny/sliced", "me/tiny sliced", "me/--tiny", "", "datasets/me"])
def test_a_malformed_repo_id_is_refused(sliced, repo_id):
    api = _api()
    with pytest.raises(hub.HubError, match="repo"):
        hub.push(sliced[0], repo_id, api=api)
    assert api.method_calls == []


def test_a_remote_run_that_does_not_list_is_refused(monkeypatch):
    api = _api()
    with pytest.raises(hub.HubError, match="empty or does not exist"):
        hub.push("memory://hub-test-nothing/runs/x", "me/tiny-sliced", api=api)

    def denied(self, path, **kwargs):
        raise PermissionError("AccessDenied")

    monkeypatch.setattr("fsspec.implementations.memory.MemoryFileSystem.find", denied)
    with pytest.raises(hub.HubError, match="cannot list .*AccessDenied"):
        hub.push("memory://hub-test-denied/runs/x", "me/tiny-sliced", api=api)
    assert api.method_calls == []


def test_a_run_that_does_not_match_its_manifest_is_refused(sliced, tmp_path):
    folder, dense, n = sliced
    run = Path(_export_run(str(tmp_path / "store"), folder, _summary(folder, dense, n)).removeprefix("file://"))
    weights = run / "model" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    api = _api()
    with pytest.raises(hub.HubError, match="does not match its MANIFEST.json"):
        hub.push(run, "me/tiny-sliced", api=api)
    (run / "MANIFEST.json").unlink()
    with pytest.raises(hub.HubError, match="export is incomplete"):
        hub.push(run, "me/tiny-sliced", api=api)
    assert api.method_calls == []


def test_a_summary_of_another_model_is_refused(sliced, tmp_path):
    folder, dense, n = sliced
    url = _export_run(str(tmp_path / "store"), folder, _summary(folder, dense, n + 8))
    with pytest.raises(hub.HubError, match="belongs to another model"):
        hub.push(url, "me/tiny-sliced", api=_api())


def _http_error(status: int) -> HfHubHTTPError:
    response = httpx.Response(status, request=httpx.Request("POST", "https://huggingface.co/api/repos/create"))
    return HfHubHTTPError(f"{status} error", response=response)


def test_hub_refusals_are_named_and_outages_stay_retryable(sliced):
    api = _api()
    api.create_repo.side_effect = _http_error(403)
    with pytest.raises(hub.HubError, match="may not write to me/tiny-sliced"):
        hub.push(sliced[0], "me/tiny-sliced", api=api)
    api.create_repo.side_effect = _http_error(503)  # an OSError: a Prefect task's retry rule retries it
    with pytest.raises(HfHubHTTPError):
        hub.push(sliced[0], "me/tiny-sliced", api=api)


def test_a_real_client_offline_or_without_a_token_is_refused(sliced, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # no request can leave this test
    with pytest.raises(hub.HubError, match="HF_HUB_OFFLINE"):
        hub.push(sliced[0], "me/tiny-sliced", token=TOKEN)
    monkeypatch.setattr(hub, "get_token", lambda: None)
    with pytest.raises(hub.HubError, match="HF_TOKEN"):
        hub.push(sliced[0], "me/tiny-sliced")


# -- the command ------------------------------------------------------------------------------------------------

def test_command_dry_run_and_push(sliced, monkeypatch, capsys):
    folder, _, _ = sliced
    assert cli.main(["push", str(folder), "me/tiny-sliced", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "model.safetensors" in out and "README.md" in out and "library_name: transformers" in out

    api = _api()
    monkeypatch.setattr(hub, "HfApi", lambda token=None: api)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    assert cli.main(["push", str(folder), "me/tiny-sliced", "--private", "--message", "hello"]) == 0
    assert COMMIT_URL in capsys.readouterr().out
    assert api.create_repo.call_args.kwargs["private"] is True
    assert api.create_commit.call_args.kwargs["commit_message"] == "hello"
    assert cli.main(["push", str(folder), "not a repo"]) == 2

