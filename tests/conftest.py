"""Tiny models built from configs (no downloads) and calibration data, shared by the tests."""

from __future__ import annotations

import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# `datasets` writes lock files (and Arrow caches) under HF_DATASETS_CACHE, read once at its import: the tests'
# go to a folder of their own, removed when the session ends, never into the user's ~/.cache/huggingface
_HF_DATASETS_CACHE = tempfile.TemporaryDirectory(prefix="dynslice-tests-hf-datasets-")
os.environ["HF_DATASETS_CACHE"] = _HF_DATASETS_CACHE.name

import pytest  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

# Tiny models gain nothing from threads, and on a busy 2-core machine each thread barrier can stall for
# milliseconds: one thread keeps the suite's time stable.
torch.set_num_threads(1)

VOCAB = 96

# hidden 32-48, 2-3 layers: big enough for GQA, biases and partial rotary to matter, small enough for float64.
CONFIGS = {
    "llama": lambda: transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=True),
    "mistral": lambda: transformers.MistralConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=1, max_position_embeddings=64, sliding_window=None),
    "qwen2": lambda: transformers.Qwen2Config(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False),
    "qwen3": lambda: transformers.Qwen3Config(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, max_position_embeddings=64, tie_word_embeddings=True),
    "opt": lambda: transformers.OPTConfig(
        vocab_size=VOCAB, hidden_size=32, ffn_dim=64, num_hidden_layers=3, num_attention_heads=4,
        max_position_embeddings=64, word_embed_proj_dim=32, pad_token_id=1),
    "phi": lambda: transformers.PhiConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=64, partial_rotary_factor=0.5),
}
FAMILIES = sorted(CONFIGS)


def _perturb_norms(model: torch.nn.Module) -> None:
    """Fresh norms are all-ones/zero; random scales and biases make fusion tests meaningful."""
    for name, p in model.named_parameters():
        if "norm" in name.lower():
            p.data = (1.0 + 0.3 * torch.randn_like(p)) if name.endswith("weight") else 0.1 * torch.randn_like(p)


def _exact_rmsnorm(norm: torch.nn.Module):
    """transformers' RMSNorm computes in float32 even for float64 inputs; references must be exact."""
    def forward(x):
        return norm.weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon)
    return forward


def tiny_model(family: str, dtype: torch.dtype = torch.float64, seed: int = 0) -> transformers.PreTrainedModel:
    torch.manual_seed(seed)
    config = CONFIGS[family]()
    config._attn_implementation = "eager"
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=dtype)
    _perturb_norms(model)
    if dtype == torch.float64:  # the stream's norms only: per-head q/k norms stay the library's own
        for name, module in model.named_modules():
            if type(module).__name__.endswith("RMSNorm") and not name.endswith(("q_norm", "k_norm")):
                module.forward = _exact_rmsnorm(module)
    return model.eval()


def calibration(n: int = 6, t: int = 16, seed: int = 1, pad: bool = False) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, VOCAB, (n, t), generator=g)
    mask = torch.ones_like(ids)
    if pad:  # right-pad every other sample by a varying amount
        for i in range(0, n, 2):
            mask[i, t - 3 - i % 5:] = 0
        ids = ids.masked_fill(mask == 0, 0)
    return {"input_ids": ids, "attention_mask": mask}


@pytest.fixture(params=FAMILIES)
def family(request) -> str:
    return request.param


def tiny_tokenizer() -> transformers.PreTrainedTokenizerFast:
    """Character-level tokenizer over printable ASCII: exactly VOCAB (96) ids, built without the hub."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    vocab = {"[UNK]": 0, **{chr(c): c - 31 for c in range(32, 127)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[UNK]")


def param_count(model: torch.nn.Module) -> int:
    """Unique parameters (a tied head counts once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def uneven_plan(config):
    """Per-layer widths that differ everywhere, with attention-to-MLP widths of their own."""
    from dynslice import SlicePlan

    d, n = config.hidden_size, config.num_hidden_layers
    widths = [d - 8 - 4 * (i % 3) for i in range(n)] + [d]
    parallel = type(config).__name__.startswith("Phi")
    mid = None if parallel else [d - 4 * ((i + 1) % 3) for i in range(n)]
    return SlicePlan.from_widths(widths, mid)


TEXT = ("It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in "
        "want of a wife. However little known the feelings or views of such a man may be on his first entering "
        "a neighbourhood, this truth is so well fixed in the minds of the surrounding families. ") * 30


def model_folder(tmp_path, family: str = "llama"):
    """A tiny float32 model saved with its tokenizer, and a calibration text beside it."""
    folder = tmp_path / "dense"
    model = tiny_model(family, dtype=torch.float32)
    model.save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    (tmp_path / "calib.txt").write_text(TEXT)
    return folder, model


def logits_of(model: torch.nn.Module, cal: dict) -> torch.Tensor:
    """The model's logits on a calibration batch, without gradients."""
    with torch.no_grad():
        return model(**cal).logits


def valid_diff(a: torch.Tensor, b: torch.Tensor, cal: dict) -> float:
    """Largest absolute difference between two logit tensors over the real (unpadded) tokens."""
    return (a - b)[cal["attention_mask"].bool()].abs().max().item()


def forget_prefect_services() -> None:
    """Stop Prefect's process-wide client services (tag concurrency slots): each keeps the API address it started
    with, so after a test's server is gone the next server's runs would still call the old address."""
    from prefect.concurrency.services import (ConcurrencySlotAcquisitionService,
                                              ConcurrencySlotAcquisitionWithLeaseService)

    for service in (ConcurrencySlotAcquisitionService, ConcurrencySlotAcquisitionWithLeaseService):
        service.drain_all(timeout=10, at_exit=False)


def twelve_layer_folder(root) -> None:
    """A 12-layer tiny Llama saved with its tokenizer under root/dense, with calib.txt and eval.txt beside it:
    enough layers for a run to be killed part-way through slicing."""
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=12,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(root / "dense")
    tiny_tokenizer().save_pretrained(root / "dense")
    (root / "calib.txt").write_text(TEXT)
    (root / "eval.txt").write_text(TEXT[::-1])
