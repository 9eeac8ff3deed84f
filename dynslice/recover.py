"""Recovery fine-tuning: a short LoRA fine-tune of a sliced model, merged back into its weights.

The adapters go on the linears the architecture data names (`config.dynslice["arch"]`: attention inputs and
output, MLP inputs and output of every block); optionally the blocks' shortcut matrices get low-rank updates
too. Frozen weights stay in the model's dtype; the adapters and their optimizer state are float32 (or the
model's dtype when wider). After training the updates are merged, so the model keeps the dynslice format:
the same parameter names, shapes and dtype, saved and loaded by `save_sliced` / `load_sliced`.

With `state_dir` the loop is checkpointed (safetensors + JSON, see trainstate.py) and a killed run resumes;
on the CPU the resumed run ends with the same bits as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize
from tqdm.auto import tqdm

from dynslice.architectures import spec_for
from dynslice.calibration import Calibration, as_calibration
from dynslice.errors import CalibrationError, RecoveryError
from dynslice.fingerprints import weights_fingerprint
from dynslice.config import RecoverConfig
from dynslice.trainstate import TrainCheckpoint, TrainState

log = logging.getLogger(__name__)

SHORTCUTS = ("attn_shortcut", "mlp_shortcut", "shortcut")  # the blocks' shortcut parameters (modeling_dynslice)


@dataclass(frozen=True)
class RecoveryStats:
    steps: int  # optimizer steps done in all (across resumes)
    loss_start: float | None  # mean token NLL over the first steps' batches (before the updates take hold)
    loss_end: float | None  # mean token NLL over the last steps' batches
    losses: tuple[float, ...]  # mean token NLL of every step's batch, measured before that step's update
    tokens: int  # predicted tokens trained on, in all
    trainable_parameters: int
    resumed_from: int  # the step this call started at (0: a fresh run)
    wall_s: float  # this call's time
    skipped: bool = False  # disabled, or 0 steps: the model was not touched

    def to_dict(self) -> dict:
        return asdict(self)


# -- what gets adapters ------------------------------------------------------------------------------------

def arch_of(model: nn.Module) -> dict:
    """Module paths of a sliced model (its `config.dynslice`), else of its dense family."""
    meta = getattr(model.config, "dynslice", None)
    return meta["arch"] if isinstance(meta, dict) and "arch" in meta else spec_for(model).to_dict()


def adapter_targets(model: nn.Module, arch: dict, groups: list[str]) -> list[str]:
    """Full module names of the linears in the chosen groups, e.g. `model.layers.3.self_attn.q_proj` (a pruned
    model's skipped sublayers have none)."""
    paths: list[str] = []
    for group in groups:
        value = arch[group]
        paths += [value] if isinstance(value, str) else list(value)
    layers = model.get_submodule(arch["layers"])
    return [f"{arch['layers']}.{i}.{path}" for i, layer in enumerate(layers) for path in paths
            if isinstance(_module_at(layer, path), nn.Linear)]


def _module_at(root: nn.Module, path: str) -> nn.Module | None:
    try:
        return root.get_submodule(path)
    except AttributeError:
        return None


def shortcut_slots(model: nn.Module, arch: dict) -> list[tuple[nn.Module, str]]:
    """(block, attribute) of every shortcut matrix the model carries (none on a dense model)."""
    return [(block, name) for block in model.get_submodule(arch["layers"]) for name in SHORTCUTS
            if isinstance(getattr(block, name, None), torch.Tensor)]


def adapter_dtype(model_dtype: torch.dtype) -> torch.dtype:
    """Adapters train in float32 at least: bf16 has 8 mantissa bits, so lr-sized AdamW updates to a small LoRA
    weight round to nothing, and B @ A would be rounded twice (in the adapter, then in the merge)."""
    return torch.promote_types(model_dtype, torch.float32)


class LowRankUpdate(nn.Module):
    """Parametrization S -> S + (B A)^T * scale of a shortcut S [d_in, d_out]: LoRA on the linear x -> x S."""

    def __init__(self, shortcut: torch.Tensor, rank: int, scale: float, dtype: torch.dtype):
        super().__init__()
        d_in, d_out = shortcut.shape
        # initialised on the CPU like peft's adapters, so the start does not depend on the device
        self.lora_A = nn.Parameter(torch.empty(rank, d_in, dtype=dtype))  # [r, d_in]
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.lora_B = nn.Parameter(torch.zeros(d_out, rank, dtype=dtype))  # [d_out, r]: zero, training starts at S
        self.scale = scale
        self.to(shortcut.device)

    def forward(self, shortcut: torch.Tensor) -> torch.Tensor:
        # the sum in float32, rounded once into the shortcut's dtype (the block multiplies in that dtype)
        delta = (self.lora_B @ self.lora_A).T * self.scale  # [d_in, d_out]
        return (shortcut.to(delta.dtype) + delta).to(shortcut.dtype)


def _peft():
    try:
        import peft
    except ImportError as exc:
        raise RecoveryError("recovery fine-tuning needs peft: pip install 'dynslice[recover]'") from exc
    return peft


@dataclass
class _Adapted:
    wrapped: nn.Module  # the peft model around the original one
    slots: list[tuple[nn.Module, str]]  # parametrized shortcuts
    trainable: dict[str, nn.Parameter]  # name -> adapter weight, in a fixed order


def attach(model: nn.Module, settings: RecoverConfig) -> _Adapted:
    """Wrap `model` with LoRA adapters (and shortcut updates); only those train."""
    peft = _peft()
    arch = arch_of(model)
    slots = shortcut_slots(model, arch) if settings.shortcuts == "lora" else []
    if settings.shortcuts == "lora" and not slots:
        raise RecoveryError("shortcuts: lora needs a sliced model (this one carries no shortcut matrices)")
    config = peft.LoraConfig(r=settings.rank, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                             target_modules=adapter_targets(model, arch, settings.targets), bias="none")
    wrapped = peft.get_peft_model(model, config, autocast_adapter_dtype=True)
    want = adapter_dtype(next(model.parameters()).dtype)
    for p in wrapped.parameters():
        if p.requires_grad and p.dtype != want:  # peft upcasts half adapters itself; float64 models stay exact
            p.data = p.data.to(want)
    # after peft, which freezes every parameter not named lora_*
    for block, name in slots:
        update = LowRankUpdate(getattr(block, name), settings.rank, settings.alpha / settings.rank, want)
        parametrize.register_parametrization(block, name, update)
    trainable = {n: p for n, p in wrapped.named_parameters() if p.requires_grad}
    return _Adapted(wrapped, slots, trainable)


def detach(adapted: _Adapted, merge: bool) -> nn.Module:
    """Remove the adapters, merging them into the weights (merge=True) or dropping them; the original model."""
    for block, name in adapted.slots:
        parametrize.remove_parametrizations(block, name, leave_parametrized=merge)
    # peft's merge adds the float32 B @ A into the frozen weight in place: computed in float32, rounded once
    return adapted.wrapped.merge_and_unload() if merge else adapted.wrapped.unload()


# -- data, schedule, loss ----------------------------------------------------------------------------------

def _mix(seed: int, epoch: int) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}/{epoch}".encode()).digest()[:8], "little") >> 1


def window_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """Epoch `epoch`'s permutation of the n windows: [n]. Pure, so a resumed run needs only its step."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(_mix(seed, epoch)))


def batch_rows(step: int, batch_size: int, n: int, seed: int) -> torch.Tensor:
    """Rows of optimizer step `step`: positions step*B .. step*B+B-1 of the stream of epoch permutations: [B]."""
    positions = range(step * batch_size, (step + 1) * batch_size)
    orders = {e: window_order(n, seed, e) for e in {p // n for p in positions}}
    return torch.stack([orders[p // n][p % n] for p in positions])


def lr_factor(step: int, steps: int, warmup: int, schedule: str) -> float:
    """Multiplier of the peak lr at optimizer step `step` (0-based): linear warm-up, then cosine to 0 or flat."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def predicted(mask: torch.Tensor) -> torch.Tensor:
    """Which next-token targets count: token t+1 predicted at t, both real tokens. [B, T] -> [B, T-1] bool."""
    mask = mask.bool()
    return mask[:, 1:] & mask[:, :-1]


def token_nll_sum(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Summed next-token NLL over the real tokens of a batch ([B, T] ids and mask on the model's device)."""
    logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits  # [B, T, V]
    valid = predicted(mask)
    picked = logits[:, :-1][valid]  # [n, V]
    # log-softmax in float32 at least: half-precision logits lose the small probabilities
    picked = picked.to(torch.promote_types(picked.dtype, torch.float32))
    return F.cross_entropy(picked, ids[:, 1:][valid], reduction="sum")


def _accumulate(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor, micro: int,
                device: torch.device) -> tuple[float, int]:
    """Forward/backward one optimizer step's batch [B, T] in micro-batches; (mean token NLL, tokens)."""
    count = int(predicted(mask).sum())
    total = 0.0
    for start in range(0, ids.shape[0], micro):
        nll = token_nll_sum(model, ids[start:start + micro].to(device), mask[start:start + micro].to(device))
        # divided by the whole batch's count: the accumulated gradient is the big batch's mean-loss gradient
        (nll / count).backward()
        total += float(nll.detach())
    return total / count, count


# -- determinism ---------------------------------------------------------------------------------------------

def _rng_devices(device: torch.device) -> list:
    return [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []


def rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    """The generators training draws from (dropout, adapter init): the CPU's, and the CUDA device's."""
    states = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state(device)
    return states


def set_rng_state(states: dict[str, torch.Tensor], device: torch.device) -> None:
    torch.set_rng_state(states["cpu"])
    if device.type == "cuda" and "cuda" in states:
        torch.cuda.set_rng_state(states["cuda"], device)


@contextlib.contextmanager
def _private_rng(seed: int, device: torch.device) -> Iterator[None]:
    """Seeded generators for the run; the caller's generator states come back afterwards."""
    with torch.random.fork_rng(devices=_rng_devices(device), device_type="cuda"):
        torch.manual_seed(seed)
        yield


def fingerprint(model: nn.Module, calib: Calibration, settings: RecoverConfig) -> str:
    """What a saved training state must match: the weights (names, shapes, a sample of each, dtype), the plan,
    the training tokens and the settings that change the result (not paths, devices or library versions)."""
    h = hashlib.sha256()
    h.update(json.dumps(getattr(model.config, "dynslice", None), sort_keys=True, default=str).encode())
    h.update(weights_fingerprint(model).encode())
    h.update(json.dumps(settings.key_params(), sort_keys=True).encode())
    h.update(calib.fingerprint().encode())
    return h.hexdigest()


# -- the loop -------------------------------------------------------------------------------------------------

def _check_windows(calib: Calibration) -> None:
    short = (calib.attention_mask.sum(1) < 2).nonzero().flatten().tolist()
    if short:
        raise CalibrationError(f"training windows {short[:5]} hold fewer than 2 real tokens: nothing to predict")


def _checkpoint(adapted: _Adapted, optimizer: torch.optim.Optimizer, step: int, losses: list[float], tokens: int,
                device: torch.device) -> TrainCheckpoint:
    adam = {name: dict(optimizer.state[p]) for name, p in adapted.trainable.items() if p in optimizer.state}
    params = {name: p.detach() for name, p in adapted.trainable.items()}
    return TrainCheckpoint(step, params, adam, rng_state(device), tuple(losses), tokens)


def _restore(adapted: _Adapted, optimizer: torch.optim.Optimizer, ckpt: TrainCheckpoint,
             device: torch.device) -> None:
    if sorted(ckpt.params) != sorted(adapted.trainable):
        raise RecoveryError("the recovery checkpoint names other adapter weights than this model has")
    with torch.no_grad():
        for name, p in adapted.trainable.items():
            p.copy_(ckpt.params[name])
    # through load_state_dict, so the state lands on each parameter's device (AdamW keeps `step` on the CPU)
    names = list(adapted.trainable)
    state = optimizer.state_dict()
    state["state"] = {i: ckpt.adam[name] for i, name in enumerate(names) if name in ckpt.adam}
    optimizer.load_state_dict(state)
    set_rng_state(ckpt.rng, device)


def _summary(losses: tuple[float, ...]) -> tuple[float | None, float | None]:
    """Mean loss of the first and of the last k steps, k = a tenth of the run (1 to 10): one batch is noisy."""
    if not losses:
        return None, None
    k = max(1, min(10, len(losses) // 10))
    return sum(losses[:k]) / k, sum(losses[-k:]) / k


def _train(adapted: _Adapted, calib: Calibration, settings: RecoverConfig, state: TrainState | None,
           resume: TrainCheckpoint | None, device: torch.device, progress: bool) -> tuple[list[float], int, int]:
    """The optimizer loop from the checkpoint (or step 0) to settings.steps; (losses, tokens, first step)."""
    params = list(adapted.trainable.values())
    optimizer = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
    losses, tokens, first = [], 0, 0
    if resume is not None:
        _restore(adapted, optimizer, resume, device)
        losses, tokens, first = list(resume.losses), resume.tokens, resume.step
    micro = settings.micro_batch_size or settings.batch_size
    adapted.wrapped.train()  # dropout on
    bar = tqdm(range(first, settings.steps), desc="recovery", unit="step", disable=not progress, initial=first,
               total=settings.steps)
    for step in bar:
        rows = batch_rows(step, settings.batch_size, calib.input_ids.shape[0], settings.seed)  # [B]
        for group in optimizer.param_groups:
            group["lr"] = settings.lr * lr_factor(step, settings.steps, settings.warmup_steps, settings.schedule)
        loss, count = _accumulate(adapted.wrapped, calib.input_ids[rows], calib.attention_mask[rows], micro, device)
        if not math.isfinite(loss):
            raise RecoveryError(f"recovery diverged at step {step} (loss {loss}): lower the lr")
        if settings.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(params, settings.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss)
        tokens += count
        bar.set_postfix(loss=f"{loss:.3f}")
        done = step + 1
        if state and (done % settings.checkpoint_every == 0 or done == settings.steps):
            state.save(_checkpoint(adapted, optimizer, done, losses, tokens, device))
    if not all(bool(torch.isfinite(p).all()) for p in params):
        raise RecoveryError("recovery produced non-finite adapter weights: lower the lr")
    return losses, tokens, first


def recover(model: nn.Module, train, settings: RecoverConfig, *, state_dir: str | None = None,
            storage_options: dict | None = None, device: str | torch.device | None = None,
            progress: bool = True) -> RecoveryStats:
    """LoRA-fine-tune `model` (sliced, or dense of a supported family) in place and merge the adapters.

    train: LongTensor [N, T] of token ids, or a dict with `input_ids` and `attention_mask` (right padding
        masked), or a dynslice.data.CalibrationSample, e.g. `training_windows(settings, tokenizer)`.
    device: where training runs (default: where the model is); the model goes back where it was.
    state_dir: folder or fsspec URI; the training state is saved there every `settings.checkpoint_every`
        steps, and a run given the same folder resumes from it (bitwise the same result on the CPU).
    storage_options: fsspec options for `state_dir`; default: the environment's.
    On an exception the adapters are dropped unmerged: the model is as it was, and a rerun can resume.
    """
    started = time.perf_counter()
    if not settings.enabled or settings.steps == 0:
        log.info("recovery skipped (%s)", "disabled" if not settings.enabled else "0 steps")
        return RecoveryStats(0, None, None, (), 0, 0, 0, time.perf_counter() - started, skipped=True)
    if hasattr(train, "as_dict"):  # a dynslice.data.CalibrationSample
        train = train.as_dict()
    calib = as_calibration(train, vocab_size=model.config.vocab_size)
    _check_windows(calib)
    home = next(model.parameters()).device
    device = torch.device(device) if device is not None else home
    state = TrainState(state_dir, fingerprint(model, calib, settings), storage_options) if state_dir else None
    resume = state.load() if state else None

    was_training = model.training
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    model.to(device)
    try:
        with _private_rng(settings.seed, device):
            adapted = attach(model, settings)
            merge = False
            try:
                losses, tokens, first = _train(adapted, calib, settings, state, resume, device, progress)
                merge = True
            finally:
                detach(adapted, merge=merge)
    finally:
        for name, p in model.named_parameters():
            p.requires_grad_(flags[name])
        model.to(home)
        model.train(was_training)
    loss_start, loss_end = _summary(tuple(losses))
    stats = RecoveryStats(settings.steps, loss_start, loss_end, tuple(losses), tokens,
                          sum(p.numel() for p in adapted.trainable.values()), first, time.perf_counter() - started)
    log.info("recovery: %d steps, loss %.4f -> %.4f, %d tokens, %.1f s", stats.steps, loss_start, loss_end,
             tokens, stats.wall_s)
    return stats


def training_windows(settings: RecoverConfig, tokenizer, cache_dir=None):
    """The settings' training windows (a dynslice.data.CalibrationSample)."""
    from dynslice.data import calibration_windows

    return calibration_windows(settings.source, tokenizer, settings.nsamples, settings.seqlen, split=settings.split,
                               seed=settings.seed, cache_dir=cache_dir)
