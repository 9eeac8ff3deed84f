"""Inference speed: dense and sliced measured on the same prompts; the sliced one is smaller in memory."""

import pytest
import torch

import dynslice
from conftest import VOCAB, calibration, tiny_model
from dynslice.errors import EvaluationError
from dynslice.evaluation.speed import measure_speed, memory_footprint, speed_prompts


def test_dense_and_sliced_on_the_same_prompts():
    prompts = speed_prompts(VOCAB, 2, 12, seed=3)
    dense = tiny_model("llama", dtype=torch.float32)
    sliced = tiny_model("llama", dtype=torch.float32)
    cfg = sliced.config
    plan = dynslice.SlicePlan.constant(cfg.num_hidden_layers, cfg.hidden_size, 0.5, round_to=4)
    dynslice.slice_model(sliced, calibration(), plan, progress=False)
    results = [measure_speed(m, prompts, decode_tokens=4, repeats=2, warmup=1, progress=False)
               for m in (dense, sliced)]
    for r in results:
        assert r.batch_size == 2 and r.prompt_tokens == 12 and r.decode_tokens == 4
        assert r.prefill_tokens_per_s > 0 and r.decode_ms_per_token > 0 and r.decode_tokens_per_s > 0
        assert r.device == "cpu" and r.dtype == "float32" and r.peak_memory_bytes is None
    assert results[1].parameters < results[0].parameters
    assert results[1].memory_bytes < results[0].memory_bytes
    assert set(results[0].to_dict()) >= {"prefill_tokens_per_s", "decode_ms_per_token", "memory_bytes"}


def test_cached_decode_follows_the_full_forward():
    """The timed loop is real greedy decoding: its tokens equal argmax of a full forward at each step."""
    from dynslice.evaluation.speed import _call_style, _kv

    model = tiny_model("llama", dtype=torch.float32)
    prompt = speed_prompts(VOCAB, 1, 8, seed=1)
    cache_kw, keep = _call_style(model)
    with torch.no_grad():
        out = model(input_ids=prompt, use_cache=True, **keep)
        seq = torch.cat([prompt, out.logits[:, -1:].argmax(-1)], 1)
        for _ in range(3):
            out = model(input_ids=seq[:, -1:], use_cache=True, **{cache_kw: _kv(out)}, **keep)
            seq = torch.cat([seq, out.logits[:, -1:].argmax(-1)], 1)
        full = model(input_ids=seq[:, :-1]).logits.argmax(-1)
    assert torch.equal(full[:, 7:], seq[:, 8:])


def test_prompts_from_real_ids_or_seeded():
    ids = torch.arange(100)
    assert speed_prompts(VOCAB, 2, 5, ids=ids).tolist() == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]
    assert torch.equal(speed_prompts(VOCAB, 2, 5, seed=4), speed_prompts(VOCAB, 2, 5, seed=4))
    assert speed_prompts(VOCAB, 2, 80, ids=ids).shape == (2, 80)  # too few real ids: seeded random ones
    with pytest.raises(EvaluationError):
        speed_prompts(VOCAB, 0, 5)


def test_memory_footprint_counts_a_tied_head_once():
    model = tiny_model("llama", dtype=torch.float32)  # tie_word_embeddings=True in conftest
    params, nbytes = memory_footprint(model)
    # conftest's llama, by hand: V=96, D=32, MLP 64, 3 layers, 4 heads of 8, 2 KV heads (k/v project to 16)
    per_layer = 32 * 32 + 2 * (32 * 16) + 32 * 32 + 3 * (32 * 64) + 2 * 32  # q, k+v, o, gate/up/down, 2 norms
    assert params == 3 * per_layer + 96 * 32 + 32  # + the embedding (the tied head adds nothing) + final norm
    assert nbytes == params * 4 + 2 * 4 * 4  # float32 weights + rotary inv_freq and original_inv_freq [4] each


def test_bad_prompts_are_refused():
    with pytest.raises(EvaluationError, match="prompts"):
        measure_speed(tiny_model("llama", dtype=torch.float32), torch.zeros(5, dtype=torch.long))
