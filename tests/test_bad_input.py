"""Bad input ends in one `dynslice: error:` line that names the input and the fix: no traceback (unless --debug),
no file contents in the message, nothing half-written. docs/errors.md lists these cases and their messages."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import transformers

from conftest import model_folder, tiny_tokenizer
from dynslice.cli import main


@pytest.fixture
def ws(tmp_path, monkeypatch):
    monkeypatch.setenv("DYNSLICE_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    model_folder(tmp_path)
    return tmp_path


def one_error(capsys, argv: list[str]) -> str:
    """Run the CLI in-process; the error line it printed (asserting it is the only error output, exit code 2)."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("dynslice: error:")]
    assert len(lines) == 1, err
    return lines[0]


def slice_args(model: str, calib: str = "calib.txt", *extra: str) -> list[str]:
    return ["slice", "--model", model, "--calib", calib, "--sparsity", "0.25", "--out", "out", "--nsamples", "2",
            "--seqlen", "16", *extra]


@pytest.mark.parametrize("damage", ["truncated", "random"])
def test_damaged_weights(ws, capsys, damage):
    weights = ws / "dense" / "model.safetensors"
    if damage == "truncated":
        with open(weights, "r+b") as f:
            f.truncate(100)
    else:
        weights.write_bytes(torch.randint(0, 256, (4096,), dtype=torch.uint8).numpy().tobytes())
    line = one_error(capsys, slice_args("dense"))
    assert "cannot load a causal LM from dense" in line and "SafetensorError" in line
    assert not (ws / "out").exists()


def test_invalid_config_json(ws, capsys):
    (ws / "dense" / "config.json").write_text("{not json")
    assert "config.json is not valid JSON" in one_error(capsys, slice_args("dense"))


def test_calibration_text_that_is_not_utf8(ws, capsys):
    (ws / "latin1.txt").write_bytes(("café au lait " * 500).encode("latin-1"))
    line = one_error(capsys, slice_args("dense", "latin1.txt"))
    assert "latin1.txt is not UTF-8 text" in line and "iconv" in line
    assert "lait" not in line  # the file's contents never reach a message (or a Prefect log)
    assert not (ws / "out").exists()


@pytest.mark.parametrize("argv, option", [
    (["slice", "--model", "dense", "--calib", "calib.txt", "--plan", "missing.json", "--out", "o"], "--plan"),
    (["plan", "--scores", "missing.json", "--target", "0.2", "--out", "p.json"], "--scores"),
])
def test_missing_plan_or_scores_file(ws, capsys, argv, option):
    assert f"{option}: no such file missing.json" in one_error(capsys, argv)


def test_unknown_store_protocol_is_refused_before_any_work(ws, capsys):
    line = one_error(capsys, ["run", "compress", "--set", "store=foo://bar"])
    assert "unknown storage protocol foo://" in line


def test_binary_configuration_file(ws, capsys):
    (ws / "cfg.yaml").write_bytes(bytes(range(256)))
    assert "cfg.yaml is not a YAML text file" in one_error(capsys, ["run", "compress", "--config", "cfg.yaml"])


@pytest.mark.parametrize("family", ["opt", "llama"])
def test_windows_longer_than_the_model_are_refused_before_loading(ws, capsys, family):
    config = {"opt": transformers.OPTConfig(vocab_size=96, hidden_size=32, ffn_dim=64, num_hidden_layers=2,
                                            num_attention_heads=4, max_position_embeddings=64, word_embed_proj_dim=32,
                                            pad_token_id=1),
              "llama": transformers.LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=64,
                                                num_hidden_layers=2, num_attention_heads=4,
                                                max_position_embeddings=64)}[family]
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(ws / family)
    tiny_tokenizer().save_pretrained(ws / family)
    argv = slice_args(family)
    argv[argv.index("--seqlen") + 1] = "100"
    assert "windows of 100 tokens exceed the model's 64 positions" in one_error(capsys, argv)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_on_a_machine_without_one(ws, capsys):
    assert "has no CUDA GPU" in one_error(capsys, slice_args("dense", "calib.txt", "--device", "cuda"))


def test_too_little_text_names_the_options_that_exist(ws, capsys):
    argv = slice_args("dense")
    argv[argv.index("--nsamples") + 1] = "900"
    line = one_error(capsys, argv)
    assert "is too short for 900 x 16 tokens" in line and "--nsamples/--seqlen" in line and "--glue" in line
    argv += ["--glue"]  # an option the message names exists; glued, the text is still too short
    line = one_error(capsys, argv)
    assert "is too short for 900 x 16 tokens" in line and "--glue" not in line


def test_ls_of_a_missing_store_fails(ws, capsys):
    assert "holds no dynslice store" in one_error(capsys, ["ls", str(ws / "nowhere")])


def test_ls_skips_a_malformed_manifest(ws, capsys):
    from dynslice.store import ArtifactStore

    store = ArtifactStore(ws / "store")
    store.publish("slice", "good", inputs={}, result={"parameters": 10, "param_reduction": 0.5, "widths": [4, 4]},
                  files={"model/w": b"w"})
    store.fs.pipe_file(store.path("manifests", "slice", "bad.json"), b"{}")
    assert main(["ls", str(ws / "store")]) == 0
    out = capsys.readouterr().out
    assert "slice artifacts (1)" in out and "good" in out


def test_debug_shows_the_traceback(ws, capsys):
    assert main(["--debug", "plan", "--scores", "missing.json", "--target", "0.2", "--out", "p.json"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "dynslice: error: --scores: no such file" in err


def test_unreachable_store_endpoint(ws, capsys, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens on the discard port
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret-never-shown")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    for argv, words in ((["run", "compress", "--store", "s3://team/dynslice"], "cannot reach the store"),
                        (["ls", "s3://team/dynslice"], "cannot list the store")):
        line = one_error(capsys, argv)
        assert words in line and "s3://team/dynslice" in line and "secret-never-shown" not in line


def test_missing_bucket_names_the_bucket_and_the_credential_source(ws, capsys, monkeypatch):
    from s3server import s3_server

    with s3_server(monkeypatch) as (fs, bucket):
        secret = __import__("os").environ["AWS_SECRET_ACCESS_KEY"]
        line = one_error(capsys, ["run", "compress", "--store", f"s3://{bucket}-missing/dynslice"])
        assert f"s3://{bucket}-missing/dynslice" in line
        assert "environment variables AWS_ACCESS_KEY_ID" in line and secret not in line


def test_a_failed_slice_leaves_the_previous_output_intact(ws, capsys, monkeypatch):
    """`dynslice slice --out` builds the new folder aside: a failure while saving leaves the old one whole."""
    assert main(slice_args("dense")) == 0
    before = {p.name: p.read_bytes() for p in (ws / "out").iterdir()}

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("dynslice.sliced.format.save_torch_state_dict", disk_full)
    with pytest.raises(OSError, match="No space left"):
        main(slice_args("dense"))
    assert {p.name: p.read_bytes() for p in (ws / "out").iterdir()} == before
    assert not [p for p in ws.iterdir() if ".staging-" in p.name]  # nothing left beside it


def test_a_kill_between_the_two_moves_keeps_the_old_folder(tmp_path):
    from dynslice import atomic

    target = tmp_path / "model"
    target.mkdir()
    (target / "config.json").write_text(json.dumps({"old": True}))
    # what the fallback path leaves when killed after moving the old folder aside
    shutil.move(target, tmp_path / ".model.old-123")
    (tmp_path / ".model.staging-456").mkdir()
    atomic.recover(target)
    assert json.loads((target / "config.json").read_text()) == {"old": True}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    staging = atomic.staging_for(target)
    staging.mkdir()
    (staging / "config.json").write_text(json.dumps({"new": True}))
    atomic.replace_folder(staging, target)
    assert json.loads((target / "config.json").read_text()) == {"new": True}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_seqlen_exceeding_positions_inside_the_library_too():
    from dynslice.calibration import as_calibration
    from dynslice.errors import CalibrationError

    with pytest.raises(CalibrationError, match="exceed the model's 8 positions"):
        as_calibration(torch.zeros(2, 9, dtype=torch.long), vocab_size=96, max_positions=8)

