"""A loop stopped after layer k and resumed from its state folder yields byte-identical safetensors."""

from pathlib import Path

import pytest
import torch

import dynslice
from conftest import calibration, tiny_model, uneven_plan
from dynslice.architectures import spec_for


class Crash(Exception):
    pass


def _count_attention_calls(model, counter: list[int], crash_at: int | None = None):
    """Hook every layer's attention: count the layers visited, optionally crash on one of them."""
    spec = spec_for(model)
    for i, layer in enumerate(model.get_submodule(spec.layers)):
        def hook(module, args, i=i):
            if crash_at is not None and i == crash_at:
                raise Crash(f"killed in layer {i}")
            if not counter or counter[-1] != i:
                counter.append(i)
        layer.get_submodule(spec.attn).register_forward_pre_hook(hook)


def _sliced_bytes(model, folder: Path) -> bytes:
    dynslice.save_sliced(model, folder)
    return (folder / "model.safetensors").read_bytes()


@pytest.mark.parametrize("family,every", [("llama", 1), ("opt", 2), ("phi", 1)])
def test_resume_is_byte_identical(tmp_path, family, every):
    cal = calibration(n=5, pad=True)
    reference = tiny_model(family)
    plan = uneven_plan(reference.config)
    dynslice.slice_model(reference, cal, plan, batch_size=2, progress=False)
    expected = _sliced_bytes(reference, tmp_path / "reference")

    state = str(tmp_path / "state")
    crashed = tiny_model(family)
    crash = crashed.config.num_hidden_layers - 1
    _count_attention_calls(crashed, [], crash_at=crash)
    with pytest.raises(Crash):
        dynslice.slice_model(crashed, cal, plan, batch_size=2, state_dir=state, progress=False,
                             checkpoint_every=every)

    resumed, visited = tiny_model(family), []
    _count_attention_calls(resumed, visited)
    dynslice.slice_model(resumed, cal, plan, batch_size=2, state_dir=state, progress=False,
                         checkpoint_every=every)
    done_before_crash = crash - crash % every
    assert visited[0] == done_before_crash  # earlier layers were restored, not recomputed
    assert _sliced_bytes(resumed, tmp_path / "resumed") == expected


def test_finished_state_resumes_with_no_layer_work(tmp_path):
    cal, state = calibration(), str(tmp_path / "state")
    first = tiny_model("llama")
    plan = uneven_plan(first.config)
    dynslice.slice_model(first, cal, plan, state_dir=state, progress=False)
    again, visited = tiny_model("llama"), []
    _count_attention_calls(again, visited)
    dynslice.slice_model(again, cal, plan, state_dir=state, progress=False)
    assert visited == []
    assert _sliced_bytes(again, tmp_path / "a") == _sliced_bytes(first, tmp_path / "b")


def test_state_of_another_run_is_refused(tmp_path):
    state = str(tmp_path / "state")
    model = tiny_model("llama")
    dynslice.slice_model(model, calibration(), uneven_plan(model.config), state_dir=state, progress=False)
    other = tiny_model("llama")
    plan = dynslice.SlicePlan.constant(3, 32, 0.5, round_to=4)
    with pytest.raises(dynslice.StateError, match="another run"):
        dynslice.slice_model(other, calibration(), plan, state_dir=state, progress=False)


def test_state_on_an_fsspec_uri():
    cal, uri = calibration(), "memory://dynslice-resume/state"
    plan = uneven_plan(tiny_model("qwen2").config)
    crashed = tiny_model("qwen2")
    _count_attention_calls(crashed, [], crash_at=1)
    with pytest.raises(Crash):
        dynslice.slice_model(crashed, cal, plan, state_dir=uri, progress=False)
    resumed, reference = tiny_model("qwen2"), tiny_model("qwen2")
    resumed_spectra, reference_spectra = {}, {}
    dynslice.slice_model(resumed, cal, plan, state_dir=uri, progress=False, spectra=resumed_spectra)
    dynslice.slice_model(reference, cal, plan, progress=False, spectra=reference_spectra)
    for name, tensor in reference.state_dict().items():
        assert torch.equal(resumed.state_dict()[name], tensor), name
    # the PCA spectra of the layers done before the crash come back from the state, not lost
    assert sorted(resumed_spectra) == sorted(reference_spectra) == [
        "embedding", "layer.0.mid", "layer.0.out", "layer.1.mid", "layer.1.out"]
    for name, values in reference_spectra.items():
        assert torch.equal(resumed_spectra[name], values), name
        assert values.shape == (32,) and bool((values[:-1] >= values[1:]).all())  # sorted, decreasing


def test_resume_with_the_same_weights_from_another_folder(tmp_path):
    """The state matches weights, not paths: a worker with another cache path resumes the same run."""
    import transformers

    source = tiny_model("llama", dtype=torch.float32)
    for name in ("a", "b"):
        source.save_pretrained(tmp_path / name)
    cal, plan, state = calibration(), uneven_plan(source.config), str(tmp_path / "state")
    crashed = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "a")
    _count_attention_calls(crashed, [], crash_at=2)
    with pytest.raises(Crash):
        dynslice.slice_model(crashed, cal, plan, state_dir=state, progress=False)
    resumed, visited = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "b"), []
    _count_attention_calls(resumed, visited)
    dynslice.slice_model(resumed, cal, plan, state_dir=state, progress=False)
    assert visited[0] == 2

    changed = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "b")
    with torch.no_grad():
        changed.model.layers[1].mlp.down_proj.weight.mul_(1.5)  # other weights: the state is refused
    with pytest.raises(dynslice.StateError, match="another run"):
        dynslice.slice_model(changed, cal, plan, state_dir=state, progress=False)
