"""Pictures: PNG bytes drawn headless from scores and plans."""

import io

import pytest
from PIL import Image

import dynslice
from dynslice import planners
from dynslice.errors import PlanError
from dynslice.scores import LayerScores

SCORES = LayerScores(values=(0.5, 0.1, 0.05, 0.2, 0.4), metric="cosine", num_tokens=100,
                     config={"model_type": "llama", "num_hidden_layers": 5},
                     provenance={"model": {"id": "tiny"}})


def _image(png: bytes) -> Image.Image:
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    image = Image.open(io.BytesIO(png))
    image.load()
    return image


def test_plot_scores_is_a_png():
    image = _image(dynslice.plot_scores(SCORES))
    assert image.width > 200 and image.height > 100
    other = LayerScores(values=(0.1, 0.5, 0.05, 0.2, 0.4), metric="cosine", num_tokens=100)
    assert dynslice.plot_scores(other) != dynslice.plot_scores(SCORES)  # the bars follow the values


def test_plot_plan_is_a_png():
    import transformers

    config = transformers.LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=5,
                                      num_attention_heads=4)
    dynamic = planners.dynamic(SCORES, 0.25, 0.25, config=config, round_to=4)
    constant = planners.constant(0.25, config, round_to=4)
    image = _image(dynslice.plot_plan(dynamic))
    assert image.width > 200 and image.height > 100
    assert dynslice.plot_plan(dynamic) != dynslice.plot_plan(constant)
    _image(dynslice.plot_plan(dynslice.SlicePlan.from_widths([48, 40, 64])))  # a plan without provenance


def test_plot_plan_rejects_a_narrow_hidden_size():
    with pytest.raises(PlanError, match="narrower"):
        dynslice.plot_plan(dynslice.SlicePlan.from_widths([48, 40, 64]), hidden_size=32)
