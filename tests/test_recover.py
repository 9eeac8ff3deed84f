"""Recovery fine-tuning: LoRA on a sliced model lowers its loss, merges back into the dynslice format, and a
killed run resumes from its checkpoint to the same bits as an uninterrupted one."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError
from safetensors.torch import save_file

import dynslice
from conftest import calibration, tiny_model, uneven_plan
from dynslice.recover import adapter_dtype, attach, batch_rows, detach, lr_factor, recover, token_nll_sum
from dynslice.config import RecoverConfig

ROOT = Path(__file__).resolve().parents[1]

# small and quick: 8 windows of 16 tokens, 4 per step, a high lr so a few dozen steps show
FAST = dict(enabled=True, steps=30, batch_size=4, lr=3e-3, warmup_steps=2, rank=4, alpha=8.0)


def fast(**changes) -> RecoverConfig:
    return RecoverConfig(**{**FAST, **changes})


def sliced(family: str = "llama", dtype: torch.dtype = torch.float32):
    model = tiny_model(family, dtype=torch.float32)
    dynslice.slice_model(model, calibration(), uneven_plan(model.config), progress=False)
    return model.to(dtype)


def train_windows() -> dict[str, torch.Tensor]:
    return calibration(n=8, t=16, seed=5, pad=True)


def nll(model, data) -> float:
    with torch.no_grad():
        ids, mask = data["input_ids"], data["attention_mask"]
        return float(token_nll_sum(model, ids, mask)) / int((mask[:, 1:] * mask[:, :-1]).sum())


def weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_weights(a: dict, b: dict) -> None:
    assert list(a) == list(b)
    for name in a:
        assert torch.equal(a[name], b[name]), name


class Crash(Exception):
    pass


def count_forwards(model, counter: list[int], crash_at: int | None = None) -> None:
    """Count forward passes at the embeddings (peft calls the model's forward directly, bypassing its hooks)."""
    def hook(module, args):
        counter[0] += 1
        if counter[0] == crash_at:
            raise Crash(f"killed in forward pass {crash_at}")
    model.get_input_embeddings().register_forward_pre_hook(hook)


@pytest.mark.parametrize("family", ["llama", "opt", "phi"])
def test_recovery_lowers_the_loss_and_keeps_the_format(tmp_path, family):
    model, data = sliced(family), train_windows()
    names = {k: (tuple(v.shape), v.dtype) for k, v in model.state_dict().items()}
    flags = {k: p.requires_grad for k, p in model.named_parameters()}
    config = model.config.to_dict()
    before = nll(model, data)

    stats = recover(model, data, fast(micro_batch_size=2), progress=False)

    after = nll(model, data)
    assert after < before - 0.1, (before, after)
    assert stats.steps == 30 and len(stats.losses) == 30 and stats.loss_end < stats.loss_start
    assert stats.tokens == sum(int((data["attention_mask"][r][:, 1:] * data["attention_mask"][r][:, :-1]).sum())
                               for r in (batch_rows(s, 4, 8, 0) for s in range(30)))
    assert {k: (tuple(v.shape), v.dtype) for k, v in model.state_dict().items()} == names
    assert {k: p.requires_grad for k, p in model.named_parameters()} == flags
    assert model.config.to_dict() == config and not model.training
    # what the pipeline does next: save, reload, same logits
    dynslice.save_sliced(model, tmp_path / "recovered")
    reloaded = dynslice.load_sliced(tmp_path / "recovered", attn_implementation="eager")  # as tiny_model
    with torch.no_grad():
        ids = data["input_ids"]
        assert torch.equal(reloaded(input_ids=ids).logits, model(input_ids=ids).logits)


def test_shortcut_updates_train_and_merge():
    model, data = sliced("llama"), train_windows()
    shortcuts = {k: v.clone() for k, v in model.state_dict().items() if "shortcut" in k}
    linears = {k: v.clone() for k, v in model.state_dict().items() if "shortcut" not in k}
    frozen = sliced("llama")
    recover(frozen, data, fast(), progress=False)
    recover(model, data, fast(shortcuts="lora"), progress=False)
    state = model.state_dict()
    assert all(not torch.equal(state[k], v) for k, v in shortcuts.items())
    assert all(state[k].shape == v.shape for k, v in shortcuts.items())
    assert all(not torch.equal(state[k], v) for k, v in linears.items() if k.endswith("proj.weight"))
    # the frozen run leaves the shortcuts exactly as sliced
    assert all(torch.equal(frozen.state_dict()[k], v) for k, v in shortcuts.items())
    assert nll(model, data) < nll(sliced("llama"), data)


@pytest.mark.parametrize("dtype,want", [(torch.bfloat16, torch.float32), (torch.float64, torch.float64)])
def test_adapters_train_in_float32_or_wider_and_detach_exactly(dtype, want):
    model = sliced("llama", dtype)
    original = weights(model)
    adapted = attach(model, fast(shortcuts="lora"))
    assert adapter_dtype(dtype) == want
    assert {p.dtype for p in adapted.trainable.values()} == {want}
    assert detach(adapted, merge=False) is model
    assert_same_weights(weights(model), original)


def test_bfloat16_model_recovers_and_stays_bfloat16():
    model, data = sliced("qwen2", torch.bfloat16), train_windows()
    before = nll(model, data)
    recover(model, data, fast(shortcuts="lora"), progress=False)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert nll(model, data) < before - 0.05  # (two sublayers carry adapters here: a smaller drop)


def test_same_seed_same_bits_other_seed_other_bits():
    data = train_windows()
    runs = []
    for seed in (0, 0, 1):
        model = sliced()
        recover(model, data, fast(steps=4, seed=seed), progress=False)
        runs.append(weights(model))
    assert_same_weights(runs[0], runs[1])
    assert any(not torch.equal(runs[0][k], runs[2][k]) for k in runs[0])


_CHILD = """
import os, signal, sys
import torch
torch.set_num_threads(1)  # as conftest: the same kernels as the parent, hence the same bits
from safetensors.torch import load_file
import dynslice
from dynslice.recover import recover
from dynslice.config import RecoverConfig

folder, data, state, settings, kill_at = sys.argv[1:]
model = dynslice.load_sliced(folder)
calls = [0]

def hook(module, args):
    calls[0] += 1
    if calls[0] == int(kill_at):
        os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no finally: as the OOM killer or a preempted node

model.get_input_embeddings().register_forward_pre_hook(hook)
recover(model, load_file(data), RecoverConfig.model_validate_json(settings), state_dir=state, progress=False)
sys.exit(3)  # not reached
"""


def test_sigkilled_run_resumes_to_the_same_bits(tmp_path):
    folder, data_file, state = tmp_path / "sliced", tmp_path / "train.safetensors", tmp_path / "state"
    dynslice.save_sliced(sliced("llama"), folder)
    data = train_windows()
    save_file(data, data_file)
    # 2 forward passes per step (accumulation), dropout on, shortcut updates: all of it must resume exactly
    settings = fast(steps=8, micro_batch_size=2, checkpoint_every=2, shortcuts="lora")

    reference = dynslice.load_sliced(folder)
    expected = recover(reference, data, settings, progress=False)

    # killed at the first forward pass of step 5 (0-based): the last checkpoint is after step 4
    script = tmp_path / "child.py"
    script.write_text(_CHILD)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, str(script), str(folder), str(data_file), str(state),
                           settings.model_dump_json(), str(2 * 5 + 1)], env=env, capture_output=True, timeout=600)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    assert json.loads((state / "state.json").read_text())["step"] == 4

    resumed, calls = dynslice.load_sliced(folder), [0]
    count_forwards(resumed, calls)
    stats = recover(resumed, data, settings, state_dir=str(state), progress=False)
    assert calls[0] == 2 * (8 - 4)  # steps 0-3 came from the checkpoint, not recomputed
    assert stats.resumed_from == 4
    assert stats.losses == expected.losses and stats.tokens == expected.tokens
    assert_same_weights(weights(resumed), weights(reference))


def test_crashed_run_leaves_the_model_as_it_was_and_resumes_on_an_fsspec_uri():
    data, uri = train_windows(), "memory://dynslice-recover/state"
    settings = fast(steps=6, checkpoint_every=4)
    reference = sliced()
    recover(reference, data, settings, progress=False)

    model, calls = sliced(), [0]
    original = weights(model)
    count_forwards(model, calls, crash_at=6)
    with pytest.raises(Crash):
        recover(model, data, settings, state_dir=uri, progress=False)
    assert_same_weights(weights(model), original)  # adapters dropped, nothing merged

    calls[0] = -100  # no more crash
    stats = recover(model, data, settings, state_dir=uri, progress=False)
    assert stats.resumed_from == 4 and calls[0] == -100 + 2
    assert_same_weights(weights(model), weights(reference))

    # a finished state: no training at all, the same adapters merged again
    again, calls = sliced(), [0]
    count_forwards(again, calls)
    assert recover(again, data, settings, state_dir=uri, progress=False).resumed_from == 6
    assert calls[0] == 0
    assert_same_weights(weights(again), weights(reference))


@pytest.mark.parametrize("change", ["settings", "data", "model"])
def test_state_of_another_run_is_refused(tmp_path, change):
    state, data, settings = str(tmp_path / "state"), train_windows(), fast(steps=2)
    recover(sliced(), data, settings, state_dir=state, progress=False)
    model = sliced()
    if change == "settings":
        settings = settings.model_copy(update={"lr": 1e-3})
    elif change == "data":
        data = calibration(n=8, t=16, seed=6)
    else:
        with torch.no_grad():
            model.lm_head.weight[0, 0] += 1.0
    with pytest.raises(dynslice.StateError, match="another run"):
        recover(model, data, settings, state_dir=state, progress=False)


def test_checkpoint_cadence_does_not_change_the_state_identity(tmp_path):
    """checkpoint_every is not in the fingerprint: a rerun with another cadence resumes the same run."""
    state, data = str(tmp_path / "state"), train_windows()
    recover(sliced(), data, fast(steps=2, checkpoint_every=1), state_dir=state,
            progress=False)
    stats = recover(sliced(), data, fast(steps=2, checkpoint_every=5), state_dir=state,
                    progress=False)
    assert stats.resumed_from == 2


@pytest.mark.parametrize("settings", [RecoverConfig(), RecoverConfig(enabled=True, steps=0)])
def test_disabled_or_zero_steps_is_a_no_op(tmp_path, settings):
    model = sliced()
    original = weights(model)
    stats = recover(model, train_windows(), settings, state_dir=str(tmp_path / "state"), progress=False)
    assert stats.skipped and stats.steps == 0 and stats.losses == ()
    assert_same_weights(weights(model), original)
    assert not (tmp_path / "state").exists()


def test_windows_without_a_target_are_refused():
    data = train_windows()
    data["attention_mask"][3, 1:] = 0
    with pytest.raises(dynslice.CalibrationError, match=r"windows \[3\]"):
        recover(sliced(), data, fast(), progress=False)


def test_every_window_once_per_epoch_in_a_seeded_order():
    epoch = torch.cat([batch_rows(s, 4, 12, seed=7) for s in range(3)])
    assert sorted(epoch.tolist()) == list(range(12))
    assert torch.equal(epoch, torch.cat([batch_rows(s, 4, 12, seed=7) for s in range(3)]))
    assert not torch.equal(epoch, torch.cat([batch_rows(s, 4, 12, seed=8) for s in range(3)]))
    # batches straddle epochs: 5 windows a step over 12 windows
    stream = torch.cat([batch_rows(s, 5, 12, seed=7) for s in range(6)])
    assert sorted(stream[:12].tolist()) == sorted(stream[12:24].tolist()) == list(range(12))


def test_learning_rate_schedule():
    assert [lr_factor(s, 10, 2, "cosine") for s in (0, 1, 2)] == [0.5, 1.0, 1.0]
    assert lr_factor(6, 10, 2, "cosine") == pytest.approx(0.5)
    assert 0.0 < lr_factor(9, 10, 2, "cosine") < 0.1
    assert {lr_factor(s, 10, 0, "constant") for s in range(10)} == {1.0}


def test_settings_are_strict_and_documented():
    assert all(field.description for field in RecoverConfig.model_fields.values())
    with pytest.raises(ValidationError, match="extra"):
        RecoverConfig(learning_rate=1e-4)
    with pytest.raises(ValidationError, match="divide"):
        RecoverConfig(batch_size=4, micro_batch_size=3)
    with pytest.raises(ValidationError, match="test"):
        RecoverConfig(split="test")
    with pytest.raises(ValidationError):
        RecoverConfig(targets=[])
    with pytest.raises(ValidationError):
        RecoverConfig(targets=["q_proj"])
    assert RecoverConfig(batch_size=8, micro_batch_size=2).accumulation == 4


def test_a_pruned_model_recovers_and_keeps_its_format(tmp_path):
    """The greedy planner's models (sublayers gone) fine-tune too: adapters only where linears are left."""
    from dynslice.removal import prune

    model = prune(tiny_model("llama", dtype=torch.float32),
                  dynslice.SlicePlan.removal(3, 32, [2], attention=[0], mlp=[1]))
    names = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    data = train_windows()
    before = nll(model, data)
    recover(model, data, fast(), progress=False)
    assert nll(model, data) < before - 0.05  # (two sublayers carry adapters here: a smaller drop)
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == names
    dynslice.save_sliced(model, tmp_path / "recovered")
    reloaded = dynslice.load_sliced(tmp_path / "recovered", attn_implementation="eager")
    with torch.no_grad():
        ids = data["input_ids"]
        assert torch.equal(reloaded(input_ids=ids).logits, model(input_ids=ids).logits)
