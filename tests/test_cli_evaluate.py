"""`dynslice evaluate` and `dynslice assets`, end to end on tiny models saved by the test (offline)."""

import argparse
import json

import pytest
import torch

import dynslice
from conftest import calibration, tiny_model, tiny_tokenizer
from dynslice.commands import assets as assets_command
from dynslice.commands import evaluate as evaluate_command
from dynslice.errors import ConfigError


def _run(module, argv: list[str]) -> int:
    # the parser the way dynslice.cli builds it, with only this command
    parser = argparse.ArgumentParser(prog="dynslice")
    module.add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    dense = tiny_model("llama", dtype=torch.float32)
    dense.save_pretrained(root / "dense")
    tiny_tokenizer().save_pretrained(root / "dense")
    cfg = dense.config
    plan = dynslice.SlicePlan.constant(cfg.num_hidden_layers, cfg.hidden_size, 0.25, round_to=4)
    dynslice.slice_model(dense, calibration(), plan, progress=False)
    dynslice.save_sliced(dense, root / "sliced", tiny_tokenizer())
    text = root / "text.jsonl"
    text.write_text("".join(json.dumps({"text": f"line {i}: the quick brown fox jumps over the lazy dog"}) + "\n"
                            for i in range(8)))
    items = root / "items.jsonl"
    items.write_text("".join(json.dumps({"question": f"{i} and {i}?", "choices": ["yes", "no"], "answer": i % 2})
                             + "\n" for i in range(10)))
    return root


def test_evaluate_sliced_against_dense(models, tmp_path, capsys):
    pytest.importorskip("lm_eval")
    out = tmp_path / "report.json"
    rc = _run(evaluate_command, [
        "evaluate", "--model", str(models / "sliced"), "--baseline", str(models / "dense"),
        "--ppl", str(models / "text.jsonl"), "--seqlen", "32", "--tasks", str(models / "items.jsonl"),
        "--speed", "--prompt-len", "8", "--decode-tokens", "3", "--repeats", "1", "--device", "cpu",
        "--cache", str(tmp_path / "cache"), "--out", str(out)])
    assert rc == 0
    report = json.loads(out.read_text())
    sliced, dense = report["models"]["model"], report["models"]["baseline"]
    assert sliced["identity"]["kind"] == "sliced" and dense["identity"]["kind"] == "folder"
    assert sliced["perplexity"]["windows"] == dense["perplexity"]["windows"] > 0
    assert sliced["zero_shot"]["tasks"]["items"]["samples"] == 10
    assert sliced["speed"]["parameters"] < dense["speed"]["parameters"]
    table = capsys.readouterr().out
    for row in ("perplexity", "items acc", "items acc_norm", "prefill tokens/s", "decode ms/token", "memory MiB"):
        assert row in table


def test_evaluate_refuses_nothing_to_do(models):
    with pytest.raises(ConfigError, match="nothing to evaluate"):
        _run(evaluate_command, ["evaluate", "--model", str(models / "dense")])


def test_assets_list(tmp_path, capsys):
    assert _run(assets_command, ["assets", "list", "--cache", str(tmp_path)]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert set(listing) == {"smollm2-135m", "smollm2-135m-gguf", "wiki"}
    assert not any(v["present"] for v in listing.values())
