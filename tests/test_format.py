"""The sliced-model format: reloads to identical logits, with dynslice or with plain transformers."""

import json
from pathlib import Path

import pytest
import torch
import transformers

import dynslice
from conftest import FAMILIES, calibration, logits_of, tiny_model, tiny_tokenizer, uneven_plan


@pytest.fixture(scope="module")
def sliced_dirs(tmp_path_factory):
    """One sliced model per family, saved once for the whole module."""
    out = {}
    for family in FAMILIES:
        model = tiny_model(family)
        dynslice.slice_model(model, calibration(), uneven_plan(model.config), progress=False)
        path = tmp_path_factory.mktemp(family)
        dynslice.save_sliced(model, path, tokenizer=tiny_tokenizer())
        out[family] = (model, path)
    return out


def test_load_sliced_gives_identicallogits_of(sliced_dirs, family):
    model, path = sliced_dirs[family]
    cal = calibration(n=3, seed=7, pad=True)
    loaded = dynslice.load_sliced(path, attn_implementation="eager")
    assert loaded.dtype == torch.float64
    assert torch.equal(logits_of(loaded, cal), logits_of(model, cal))


def test_plain_transformers_loads_it(sliced_dirs, family):
    model, path = sliced_dirs[family]
    cal = calibration(n=3, seed=8)
    loaded = transformers.AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True,
                                                               attn_implementation="eager")
    assert torch.equal(logits_of(loaded, cal), logits_of(model, cal))


def test_generate_with_cache_equals_without(sliced_dirs, family):
    _, path = sliced_dirs[family]
    model = transformers.AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True,
                                                              attn_implementation="eager")
    prompt = calibration(n=2, t=5, seed=9)
    kwargs = dict(max_new_tokens=8, do_sample=False, pad_token_id=0)
    with_cache = model.generate(**prompt, use_cache=True, **kwargs)
    without = model.generate(**prompt, use_cache=False, **kwargs)
    assert with_cache.shape == (2, 13)
    assert torch.equal(with_cache, without)


def test_folder_holds_no_pickle_and_names_its_code(sliced_dirs):
    _, path = sliced_dirs["llama"]
    names = {p.name for p in Path(path).iterdir()}
    assert {"config.json", "model.safetensors", "modeling_dynslice.py"} <= names
    assert not [n for n in names if n.endswith((".bin", ".pt", ".pth", ".pkl"))]
    config = json.loads((Path(path) / "config.json").read_text())
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_dynslice.DynsliceForCausalLM"
    assert config["model_type"] == "llama" and config["tie_word_embeddings"] is False
    assert config["dynslice"]["widths"] == list(uneven_plan(tiny_model("llama").config).widths)
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    assert tokenizer("slice me").input_ids == tiny_tokenizer()("slice me").input_ids


def test_sharded_and_fsspec_round_trip(tmp_path):
    model = tiny_model("llama")
    dynslice.slice_model(model, calibration(), uneven_plan(model.config), progress=False)
    sharded = tmp_path / "sharded"
    dynslice.save_sliced(model, sharded, max_shard_size="20KB")
    assert (sharded / "model.safetensors.index.json").exists()
    assert len(list(sharded.glob("model-*.safetensors"))) > 1
    uri = "memory://dynslice-test/sliced"
    dynslice.save_sliced(model, uri)
    cal = calibration(n=2, seed=3)
    for source in (sharded, uri):
        loaded = dynslice.load_sliced(source, attn_implementation="eager")
        assert torch.equal(logits_of(loaded, cal), logits_of(model, cal))


def test_load_rejects_a_plain_model(tmp_path):
    tiny_model("llama").save_pretrained(tmp_path)
    with pytest.raises(dynslice.DynsliceError, match="not a dynslice sliced model"):
        dynslice.load_sliced(tmp_path)
