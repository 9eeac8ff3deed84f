"""Perplexity: non-overlapping windows, mean token NLL, exp — equal to transformers' own loss on a dense model."""

import math

import pytest
import torch

import dynslice
from conftest import VOCAB, calibration, tiny_model, tiny_tokenizer
from dynslice.errors import EvaluationError
from dynslice.evaluation.perplexity import perplexity, token_stream, windows_of


def _stream(length: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (length,), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("family", ["llama", "opt"])
def test_equals_transformers_loss_on_the_same_windows(family):
    model = tiny_model(family)
    ids = _stream(5 * 16 + 7)  # the 7-token tail is not a full window and is dropped
    result = perplexity(model, ids, 16, batch_size=2, progress=False)
    windows = ids[:80].view(5, 16)
    with torch.no_grad():
        # transformers' loss is the mean over the T-1 predicted tokens of one window; windows are equal-sized
        losses = [float(model(w[None], labels=w[None]).loss) for w in windows]
    assert result.windows == 5 and result.tokens == 5 * 15
    # transformers casts logits to float32 inside its loss; ours stays float64 here: agree to float32 rounding
    assert result.nll == pytest.approx(sum(losses) / 5, rel=1e-6)
    assert result.perplexity == pytest.approx(math.exp(sum(losses) / 5), rel=1e-6)


def test_equals_transformers_loss_in_float32():
    model = tiny_model("llama", dtype=torch.float32)
    ids = _stream(3 * 20, seed=4)
    result = perplexity(model, ids, 20, progress=False)
    with torch.no_grad():
        losses = [float(model(w[None], labels=w[None]).loss) for w in ids.view(3, 20)]
    assert result.perplexity == pytest.approx(math.exp(sum(losses) / 3), rel=1e-6)


def test_first_n_windows_and_batching_agree():
    model = tiny_model("llama")
    ids = _stream(6 * 12)
    first = perplexity(model, ids, 12, max_windows=2, progress=False)
    assert first.windows == 2
    assert first.nll == pytest.approx(perplexity(model, ids[:24], 12, progress=False).nll, rel=1e-12)
    one = perplexity(model, ids, 12, batch_size=1, progress=False)
    many = perplexity(model, ids, 12, batch_size=4, progress=False)
    assert one.nll == pytest.approx(many.nll, rel=1e-12)


def test_sliced_model_perplexity_runs_and_stays_close_at_no_slicing():
    model = tiny_model("llama")
    ids = _stream(4 * 16, seed=2)
    dense = perplexity(model, ids, 16, progress=False)
    cfg = model.config
    plan = dynslice.SlicePlan.constant(cfg.num_hidden_layers, cfg.hidden_size, 0.0)
    dynslice.slice_model(model, calibration(), plan, progress=False)  # rotation only: same function
    assert perplexity(model, ids, 16, progress=False).nll == pytest.approx(dense.nll, rel=1e-8)


def test_token_stream_tokenizes_once():
    tok = tiny_tokenizer()
    assert token_stream(tok, "ab\n\ncd").tolist() == tok("ab\n\ncd").input_ids


def test_too_little_text_says_what_to_do():
    with pytest.raises(EvaluationError, match="fewer than one window of 16: use a smaller --seqlen"):
        windows_of(_stream(10), 16)
    with pytest.raises(EvaluationError, match="max_windows"):
        windows_of(_stream(40), 16, max_windows=0)


@pytest.mark.slow
def test_smollm2_on_the_wikipedia_test_split():
    """The demo assets end to end: a sane perplexity for a real 135M model (needs `dynslice assets fetch`)."""
    from dynslice.data import load_corpus, resolve_data
    from dynslice.errors import DataError, SourceError
    from dynslice.models import resolve_model

    try:
        loaded = resolve_model("smollm2-135m")
        corpus = load_corpus(resolve_data("wiki", "test"))
    except (SourceError, DataError) as exc:
        pytest.skip(str(exc))
    result = perplexity(loaded.model, token_stream(loaded.tokenizer, corpus.eval_text), 256, max_windows=4,
                        batch_size=4, progress=False)
    assert 5.0 < result.perplexity < 60.0  # about 19 over all 178 windows (measured on this machine)
