"""Settings of the optional `recover` stage: a short LoRA fine-tune of the sliced model (to move into config.py).

Defaults: about 200 steps of 4 x 256 tokens on the demo Wikipedia train split, rank-8 adapters on every linear
of every block; on SmolLM2-135M that is minutes on a GPU (see bench/recover.py for the CPU figures).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from dynslice.config import _Strict

Target = Literal["attn_inputs", "attn_output", "mlp_inputs", "mlp_output"]
TARGETS: tuple[str, ...] = ("attn_inputs", "attn_output", "mlp_inputs", "mlp_output")


class RecoverConfig(_Strict):
    enabled: bool = Field(False, description="fine-tune the sliced model with LoRA after slicing (then merge)")
    source: str = Field("wiki", description="training text: hub dataset name, local file/folder, fsspec URI or "
                                            "demo name")
    split: str | None = Field("train", description="split to train on (never the evaluation's test split)")
    nsamples: int = Field(256, ge=1, description="training windows sampled from the split (cycled in a seeded "
                                                 "order when steps x batch_size exceeds them)")
    seqlen: int = Field(256, ge=2, description="tokens per training window")
    seed: int = Field(0, ge=0, description="seeds the window sampling, the adapters' initialisation, dropout and "
                                           "the order of the windows")
    steps: int = Field(200, ge=0, description="optimizer steps (0: nothing to do)")
    batch_size: int = Field(4, ge=1, description="windows per optimizer step")
    micro_batch_size: int | None = Field(None, ge=1, description="windows per forward pass; gradients accumulate "
                                                                 "over batch_size / micro_batch_size passes "
                                                                 "(null: batch_size, no accumulation)")
    lr: float = Field(5e-4, gt=0.0, description="peak AdamW learning rate")
    schedule: Literal["cosine", "constant"] = Field("cosine", description="after warm-up: cosine decay to 0 at "
                                                                          "the last step, or constant")
    warmup_steps: int = Field(10, ge=0, description="steps of linear warm-up from lr / warmup_steps to lr")
    weight_decay: float = Field(0.0, ge=0.0, description="AdamW decoupled weight decay on the adapters")
    max_grad_norm: float | None = Field(1.0, gt=0.0, description="clip the adapters' gradient norm to this "
                                                                 "(null: no clipping)")
    rank: int = Field(8, ge=1, description="LoRA rank r")
    alpha: float = Field(16.0, gt=0.0, description="LoRA alpha: the update is scaled by alpha / rank")
    dropout: float = Field(0.05, ge=0.0, lt=1.0, description="dropout on the adapters' inputs")
    targets: list[Target] = Field(default_factory=lambda: list(TARGETS), min_length=1,
                                  description="linears given adapters, as groups of the architecture's paths: "
                                              "attn_inputs (q, k, v), attn_output, mlp_inputs (gate, up / fc1), "
                                              "mlp_output")
    shortcuts: Literal["frozen", "lora"] = Field("frozen", description="the blocks' shortcut matrices: frozen, or "
                                                 "given low-rank updates of the same rank (merged like the "
                                                 "adapters)")
    checkpoint_every: int = Field(50, ge=1, description="optimizer steps between training checkpoints")

    @model_validator(mode="after")
    def _consistent(self):
        if len(set(self.targets)) != len(self.targets):
            raise ValueError(f"targets lists a group twice: {self.targets}")
        if self.micro_batch_size is not None and self.batch_size % self.micro_batch_size:
            raise ValueError(f"micro_batch_size {self.micro_batch_size} must divide batch_size {self.batch_size}")
        if self.split == "test":
            raise ValueError("split must not be `test`: recovery trains on data the evaluation does not report on")
        return self

    def key_params(self) -> dict:
        """The settings that change the trained weights (for cache keys and state fingerprints): all but
        `enabled` and `checkpoint_every`."""
        return self.model_dump(exclude={"enabled", "checkpoint_every"})

    @property
    def accumulation(self) -> int:
        """Forward passes per optimizer step."""
        return self.batch_size // (self.micro_batch_size or self.batch_size)
