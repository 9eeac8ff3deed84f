"""The model resolver: every source kind loads the same weights, and identity follows content, not paths."""

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import dynslice
from conftest import VOCAB, calibration, tiny_model, tiny_tokenizer
from dynslice.errors import SourceError
from dynslice.identity import ModelIdentity, local_digest as folder_sha256
from dynslice.models import load_gguf, resolve_model
from dynslice.sources import classify_source
from s3server import s3_server


@pytest.fixture(scope="module")
def dense_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("dense")
    tiny_model("llama", dtype=torch.float32).save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder


def _ids() -> torch.Tensor:
    return torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(3))


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(_ids()).logits


def _permute(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's q/k row order (rotary halves interleaved per head); transformers undoes it on load."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(model, path: Path) -> Path:
    """A float32 llama GGUF written with the gguf package: tensor names and metadata as llama.cpp writes them."""
    gguf = pytest.importorskip("gguf")
    c = model.config
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_block_count(c.num_hidden_layers)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_rope_dimension_count(c.hidden_size // c.num_attention_heads)
    w.add_rope_freq_base(c.rope_parameters["rope_theta"])
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_tokenizer_model("llama")  # vocab_size is read from the token list
    w.add_token_list([f"<t{i}>" for i in range(c.vocab_size)])
    w.add_token_scores([0.0] * c.vocab_size)
    w.add_token_types([1] * c.vocab_size)
    sd = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    w.add_tensor("token_embd.weight", sd["model.embed_tokens.weight"])
    names = {"input_layernorm": "attn_norm", "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
             "post_attention_layernorm": "ffn_norm", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
             "mlp.down_proj": "ffn_down"}
    for i in range(c.num_hidden_layers):
        p = f"model.layers.{i}."
        for hf, gg in names.items():
            w.add_tensor(f"blk.{i}.{gg}.weight", sd[f"{p}{hf}.weight"])
        w.add_tensor(f"blk.{i}.attn_q.weight", _permute(sd[p + "self_attn.q_proj.weight"], c.num_attention_heads))
        w.add_tensor(f"blk.{i}.attn_k.weight", _permute(sd[p + "self_attn.k_proj.weight"], c.num_key_value_heads))
    w.add_tensor("output_norm.weight", sd["model.norm.weight"])  # no output.weight: the head is tied
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_local_folder_loads_with_content_identity(dense_dir, tmp_path):
    loaded = resolve_model(dense_dir)
    assert loaded.identity.kind == "folder"
    assert loaded.identity.sha256 == folder_sha256(dense_dir)
    assert loaded.identity.key == f"sha256:{loaded.identity.sha256}"
    torch.testing.assert_close(_logits(loaded.model), _logits(tiny_model("llama", dtype=torch.float32)))
    assert loaded.tokenizer("ab").input_ids == tiny_tokenizer()("ab").input_ids
    # the same bytes elsewhere are the same model for caching; the path is not part of the key
    copy = shutil.copytree(dense_dir, tmp_path / "elsewhere")
    assert resolve_model(copy).identity.key == loaded.identity.key


def test_identity_changes_with_weights(dense_dir, tmp_path):
    other = tmp_path / "other"
    tiny_model("llama", dtype=torch.float32, seed=5).save_pretrained(other)
    assert folder_sha256(other) != folder_sha256(dense_dir)


def test_hub_identity_key_is_id_and_revision():
    ident = ModelIdentity("hub", "HuggingFaceTB/SmolLM2-135M", revision="abc123")
    assert ident.key == "hub:HuggingFaceTB/SmolLM2-135M@abc123"
    assert ident.to_dict()["key"] == ident.key


def test_sliced_folder_loads_through_load_sliced(tmp_path):
    model = tiny_model("llama", dtype=torch.float32)
    plan = dynslice.SlicePlan.constant(model.config.num_hidden_layers, model.config.hidden_size, 0.25, round_to=4)
    dynslice.slice_model(model, calibration(), plan, progress=False)
    dynslice.save_sliced(model, tmp_path / "sliced", tiny_tokenizer())
    loaded = resolve_model(tmp_path / "sliced")
    assert loaded.identity.kind == "sliced"
    assert loaded.model.config.dynslice["widths"] == list(plan.widths)
    torch.testing.assert_close(_logits(loaded.model), _logits(model))


def test_gguf_written_by_the_test_loads_to_the_same_logits(tmp_path):
    model = tiny_model("llama", dtype=torch.float32)
    path = write_gguf(model, tmp_path / "tiny.gguf")
    assert classify_source(str(path)) == "gguf"
    loaded = resolve_model(path, tokenizer=tiny_tokenizer())
    assert loaded.identity.kind == "gguf" and len(loaded.identity.sha256) == 64
    assert getattr(loaded.model, "hf_quantizer", None) is None  # a plain dense model: saves and slices
    torch.testing.assert_close(_logits(loaded.model), _logits(model), atol=1e-5, rtol=1e-5)
    loaded.model.save_pretrained(tmp_path / "converted")
    assert resolve_model(tmp_path / "converted", tokenizer=tiny_tokenizer()).identity.kind == "folder"


def test_s3_uri_is_copied_to_the_cache_once(dense_dir, tmp_path, monkeypatch):
    with s3_server(monkeypatch) as (fs, bucket):
        fs.put(str(dense_dir), f"{bucket}/models/tiny", recursive=True)
        uri = f"s3://{bucket}/models/tiny"
        assert classify_source(uri) == "uri"
        loaded = resolve_model(uri, cache_dir=tmp_path / "cache")
        assert loaded.identity.kind == "uri"
        assert loaded.identity.sha256 == folder_sha256(dense_dir)  # the content identity of the same bytes
        torch.testing.assert_close(_logits(loaded.model), _logits(tiny_model("llama", dtype=torch.float32)))
        copies = list((tmp_path / "cache" / "remote").iterdir())
        stamp = (copies[0] / ".dynslice-listing.json").stat().st_mtime_ns
        resolve_model(uri, cache_dir=tmp_path / "cache")
        assert (copies[0] / ".dynslice-listing.json").stat().st_mtime_ns == stamp  # reused, not copied again
        fs.pipe(f"{bucket}/models/tiny/README.md", b"changed upstream")
        resolve_model(uri, cache_dir=tmp_path / "cache")
        assert (copies[0] / "README.md").read_bytes() == b"changed upstream"  # a changed listing is copied anew


def test_identity_reads_the_weights_once_then_only_their_version_stamps(tmp_path, monkeypatch):
    """A fully cached run of a big local model must not re-read its weights to know which model it is."""
    from dynslice import identity

    folder = tmp_path / "model"
    tiny_model("llama", dtype=torch.float32).save_pretrained(folder)
    hashed = []
    real = identity.sha256_file
    monkeypatch.setattr(identity, "sha256_file", lambda path: hashed.append(path.name) or real(path))
    first = identity.identify_model(str(folder), cache_dir=tmp_path / "cache")
    assert sorted(hashed) == ["config.json", "model.safetensors"]
    hashed.clear()
    assert identity.identify_model(str(folder), cache_dir=tmp_path / "cache") == first
    assert hashed == []  # remembered against size, mtime, ctime and inode: nothing was read
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01
    stat = weights.stat()
    weights.write_bytes(bytes(data))
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same size, same mtime: ctime still moves
    changed = identity.identify_model(str(folder), cache_dir=tmp_path / "cache")
    assert hashed == ["model.safetensors"] and changed.key != first.key


def test_a_uri_is_identified_from_its_listing_after_the_first_download(dense_dir, tmp_path, monkeypatch):
    from dynslice import identity

    with s3_server(monkeypatch) as (fs, bucket):
        fs.put(str(dense_dir), f"{bucket}/models/tiny", recursive=True)
        uri = f"s3://{bucket}/models/tiny"
        first = identity.identify_model(uri, cache_dir=tmp_path / "cache")
        assert first.key == f"sha256:{folder_sha256(dense_dir)}"
        shutil.rmtree(tmp_path / "cache" / "remote")  # a fresh worker: no local copy left
        monkeypatch.setattr(identity, "fetch_uri", lambda *a, **k: pytest.fail("downloaded again"))
        assert identity.identify_model(uri, cache_dir=tmp_path / "cache") == first


def test_classify_sources(dense_dir, tmp_path):
    assert classify_source(str(dense_dir)) == "folder"
    assert classify_source("HuggingFaceTB/SmolLM2-135M") == "hub"
    assert classify_source("gpt2") == "hub"
    assert classify_source("smollm2-135m") == "demo"
    assert classify_source("s3://bucket/models/x") == "uri"


@pytest.mark.parametrize("source, words", [
    ("./missing/folder", "no such file or folder"),
    ("missing.gguf", "no such file or folder"),
])
def test_bad_sources_name_the_fix(source, words):
    with pytest.raises(SourceError, match=words):
        classify_source(source)


def test_folder_without_config_or_tokenizer(dense_dir, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="no config.json"):
        resolve_model(tmp_path / "empty")
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(SourceError, match="not a .gguf"):
        resolve_model(tmp_path / "weights.bin")
    bare = tmp_path / "bare"
    tiny_model("llama", dtype=torch.float32).save_pretrained(bare)
    with pytest.raises(SourceError, match=r"no tokenizer in .*tokenizer.save_pretrained.*--tokenizer"):
        resolve_model(bare)
    assert resolve_model(bare, tokenizer=dense_dir).tokenizer is not None  # the fix the message names


def test_demo_model_missing_says_fetch(tmp_path):
    with pytest.raises(SourceError, match="dynslice assets fetch"):
        resolve_model("smollm2-135m", cache_dir=tmp_path)


def test_gguf_load_helper_rejects_garbage(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf")
    with pytest.raises(SourceError, match="cannot load GGUF"):
        load_gguf(bad)


@pytest.mark.slow
def test_cached_smollm2_gguf_matches_the_converted_folder():
    from dynslice.assets import fetch_assets
    from dynslice.locations import cache_root

    fetch_assets(["smollm2-135m", "smollm2-135m-gguf"])  # idempotent: downloads only the first time
    gguf = cache_root() / "models/smollm2-135m-gguf/SmolLM2-135M-Instruct.Q4_1.gguf"
    from_gguf = resolve_model(gguf)
    from_folder = resolve_model("smollm2-135m")
    ids = from_folder.tokenizer("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(from_gguf.model(ids).logits, from_folder.model(ids).logits)


def test_hub_id_resolves_its_revision_from_the_local_hub_cache(dense_dir, tmp_path, monkeypatch):
    """Offline (conftest sets HF_HUB_OFFLINE=1): a hub id loads from the hub cache, keyed by the commit."""
    from huggingface_hub import constants

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--acme--tiny-llama"
    shutil.copytree(dense_dir, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    loaded = resolve_model("acme/tiny-llama")
    assert loaded.identity == ModelIdentity("hub", "acme/tiny-llama", revision=commit)
    assert loaded.identity.key == f"hub:acme/tiny-llama@{commit}"
    torch.testing.assert_close(_logits(loaded.model), _logits(tiny_model("llama", dtype=torch.float32)))
    with pytest.raises(SourceError, match="local hub cache, or pass a local folder"):
        resolve_model("acme/not-cached")
