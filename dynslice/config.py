"""One validated configuration per entry point, shared by the CLI, the flows and the deployment forms.

Every model is pydantic with extra="forbid": a misspelt or out-of-range value is refused before any work,
with the field's dotted name in the message. YAML files and `--set a.b=value` overrides both land here.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from dynslice.errors import ConfigError, first_line

Dtype = Literal["float32", "bfloat16", "float16", "float64", "auto"]  # auto: the checkpoint's own
_FILE_SUFFIXES = (".txt", ".jsonl", ".json", ".parquet")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelConfig(_Strict):
    """The model to slice."""
    source: str = Field("smollm2-135m", description="hub id, local folder, .gguf file, fsspec URI or demo name")
    revision: str | None = Field(None, description="hub revision (branch, tag or commit)")
    dtype: Dtype = Field("float32", description="weights' dtype while slicing and evaluating (auto: the "
                                                "checkpoint's own)")


class CalibrationConfig(_Strict):
    """The text the layer scores and the PCA rotations are measured on."""
    source: str = Field("wiki", description="hub dataset name, local file/folder, fsspec URI or demo name")
    split: str | None = Field(None, description="split to sample (default: the source's train split)")
    nsamples: int = Field(32, ge=1, description="calibration windows")
    seqlen: int = Field(256, ge=2, description="tokens per window")
    seed: int = Field(0, ge=0, description="seeds the choice of calibration windows")
    batch_size: int = Field(8, ge=1, description="windows per forward pass while scoring and slicing")
    glue: bool = Field(False, description="let windows span document boundaries (one token stream)")
    pad_short: bool = Field(False, description="keep documents shorter than a window, padded (masked out)")


class PlanConfig(_Strict):
    """How wide each layer stays: the planner, its target and its limits."""
    planner: Literal["constant", "dynamic", "removal", "greedy", "auto"] = Field(
        "dynamic", description="constant (SliceGPT), dynamic (the paper), removal (ShortGPT: whole layers by "
                               "score), greedy (layers, attention or MLP sublayers removed by measured held-out "
                               "loss), auto (the best "
                               "candidate on held-out ppl; with budget params removal and greedy compete too)")
    metric: Literal["cosine", "angular"] = Field("cosine", description="layer score: 1 - cos(h_in, h_out) "
                                                                    "(cosine) or arccos(cos) / pi (angular)")
    target: float = Field(0.25, ge=0.0, lt=1.0, description="mean slicing fraction, or parameters removed")
    variation: float | None = Field(None, ge=0.0, description="the paper's a in [0, target]; default target / 2")
    variations: list[float] | None = Field(None, description="auto: the variations tried (default 5 in [0, t])")
    budget: Literal["mean", "params"] = Field("mean", description="what target means: the mean slicing "
                                                                  "fraction (mean) or the fraction of parameters "
                                                                  "removed (params)")
    round_to: int = Field(8, ge=1, description="every width is a multiple of this (hardware-friendly shapes)")
    max_slice: float = Field(0.9, gt=0.0, lt=1.0, description="no layer loses more than this fraction of its "
                                                              "width")
    units: Literal["sublayers", "layers"] = Field(
        "sublayers", description="what the greedy planner removes: sublayers (a layer's attention, its MLP, or the "
                                 "whole layer; sequential blocks) or whole layers only")
    untie_head: bool = Field(False, description="give a head tied to the embedding its own matrix (SliceGPT's way) "
                                                "instead of keeping it tied; costs vocab x hidden parameters. "
                                                "LayerNorm families (OPT, Phi) always untie")

    @model_validator(mode="after")
    def _variation_in_range(self):
        for a in ([self.variation] if self.variation is not None else []) + list(self.variations or []):
            if not 0.0 <= a <= self.target:
                raise ValueError(f"variation {a} must be in [0, target={self.target}]")
        if self.planner in ("removal", "greedy") and self.budget != "params":
            raise ValueError(f"the {self.planner} planner removes layers, which slices nothing: its target "
                             "is a fraction of the parameters, so set budget: params (--budget params)")
        if self.planner in ("removal", "greedy") and self.variation is not None:
            raise ValueError(f"a variation applies to the dynamic planner, not to {self.planner}")
        return self

    @property
    def effective_variation(self) -> float:
        return self.target / 2 if self.variation is None else self.variation


class EvaluationConfig(_Strict):
    """What to measure on the dense and the sliced model (the same data and prompts for both)."""
    ppl: str | None = Field("wiki", description="perplexity data (its test split unless ppl_split is set): a hub "
                                                "dataset name, local file or folder, fsspec URI or demo name; "
                                                "null to skip")
    ppl_split: str | None = Field(None, description="split to measure perplexity on (default: the source's test split)")
    ppl_seqlen: int = Field(256, ge=2, description="perplexity window length in tokens")
    ppl_windows: int | None = Field(64, ge=1, description="only the first n windows; null for all")
    field: str | None = Field(None, description="the text column of JSON/parquet perplexity data (default: the "
                                                "source's own, else `text`)")
    tasks: list[str] = Field(default_factory=lambda: ["mmlu_exemplars"],
                             description="lm-eval tasks, local JSONL/YAML task files or folders, `mmlu_exemplars` "
                                         "(offline) or `paper` (piqa, hellaswag, arc_easy, arc_challenge, "
                                         "winogrande); empty to skip")
    limit: int | None = Field(100, ge=1, description="items per task; null for all")
    num_fewshot: int | None = Field(None, ge=0, description="few-shot examples per task item (null: each task's own)")
    speed: bool = Field(True, description="measure prefill tokens/s and decode ms/token")
    prompt_len: int = Field(128, ge=1, description="speed: prompt tokens")
    decode_tokens: int = Field(32, ge=1, description="speed: generated tokens")
    speed_batch: int = Field(1, ge=1, description="speed: prompts per batch")
    repeats: int = Field(3, ge=1, description="speed: timed runs (the median is reported)")
    batch_size: int = Field(8, ge=1, description="perplexity and zero-shot batch size")

    @model_validator(mode="after")
    def _something(self):
        if not (self.ppl or self.tasks or self.speed):
            raise ValueError("nothing to evaluate: set ppl, tasks and/or speed")
        return self


RecoverTarget = Literal["attn_inputs", "attn_output", "mlp_inputs", "mlp_output"]
RECOVER_TARGETS: tuple[str, ...] = ("attn_inputs", "attn_output", "mlp_inputs", "mlp_output")


class RecoverConfig(_Strict):
    """The optional `recover` stage: a short LoRA fine-tune of the sliced model, merged back into its weights."""
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
    targets: list[RecoverTarget] = Field(default_factory=lambda: list(RECOVER_TARGETS), min_length=1,
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


class HubConfig(_Strict):
    """Optional last step: push the run's sliced model to the Hugging Face Hub with a generated model card."""
    repo_id: str | None = Field(None, description="Hub repo (org/name) to push the sliced model to after the run; "
                                                  "null: no push")
    private: bool = Field(False, description="create the repo private")
    revision: str | None = Field(None, description="branch to commit to (created from main); null: main")
    token_block: str | None = Field(None, description="Prefect Secret block holding a Hub write token (default: "
                                                      "HF_TOKEN in the worker's environment); never the token "
                                                      "itself")


class SelectionConfig(_Strict):
    """Held-out data for picking among plans (never the evaluation's test split)."""
    source: str = Field("wiki", description="held-out text: hub dataset name, local file/folder, fsspec URI or "
                                            "demo name")
    split: str | None = Field("validation", description="held-out split (null: a single file)")
    seqlen: int = Field(256, ge=2, description="tokens per held-out window")
    windows: int = Field(16, ge=1, description="held-out windows each candidate plan is measured on")

    @model_validator(mode="after")
    def _held_out(self):
        if self.split is None and not self.source.lower().endswith(_FILE_SUFFIXES):
            raise ValueError(f"split must name a held-out split of {self.source!r} (e.g. validation); only a single "
                             f"file may leave it null")
        if self.split == "test":
            raise ValueError("split must not be `test`: plans are chosen on held-out data, reported on test")
        return self


class TimeoutConfig(_Strict):
    """How long each stage may run before it fails (seconds; null: no limit). A guard against hung runs: the
    defaults leave room for a 70B model on one GPU. A stage that times out is not retried."""
    assets: int | None = Field(1800, ge=1, description="fetching the demo assets a run names")
    calibration: int | None = Field(3600, ge=1, description="sampling and tokenizing the calibration windows")
    score: int | None = Field(10800, ge=1, description="the dense pass that scores every layer")
    plan: int | None = Field(600, ge=1, description="turning scores into widths")
    search: int | None = Field(21600, ge=1, description="the greedy planner's held-out measurements")
    slice: int | None = Field(43200, ge=1, description="the layer loop (a killed run resumes from its checkpoint)")
    recover: int | None = Field(43200, ge=1, description="the LoRA fine-tune after slicing")
    evaluate: int | None = Field(43200, ge=1, description="one model's perplexity, zero-shot tasks and speed")
    publish: int | None = Field(7200, ge=1, description="exporting the run's report and model (and a Hub push)")


STORE_DEFAULT = "./dynslice-store"


class CompressConfig(_Strict):
    """One compression run: a model sliced to a plan, evaluated against the dense model, published to a store."""
    model: ModelConfig = Field(ModelConfig(), description="the model to slice")
    calibration: CalibrationConfig = Field(CalibrationConfig(), description="calibration text (scores and PCA)")
    plan: PlanConfig = Field(PlanConfig(), description="the per-layer widths: planner, target, limits")
    evaluation: EvaluationConfig = Field(EvaluationConfig(), description="dense against sliced: perplexity, "
                                                                         "zero-shot accuracy, speed")
    selection: SelectionConfig = Field(SelectionConfig(), description="held-out data for choosing between plans "
                                                                      "(planner auto, sweeps)")
    recover: RecoverConfig = Field(RecoverConfig(), description="optional LoRA fine-tune of the sliced model")
    hub: HubConfig = Field(HubConfig(), description="optional push of the sliced model to the Hugging Face Hub")
    store: str = Field(STORE_DEFAULT, description="artifact store: a folder or an fsspec URI (s3://...). Left at "
                                                  "./dynslice-store, a Prefect run uses the team store named by "
                                                  "the Prefect Variable dynslice-store when it is set")
    store_block: str | None = Field(None, description="Prefect block holding the store's credentials: "
                                                      "aws-credentials/<name> or minio-credentials/<name> "
                                                      "(prefect-aws), or a Secret block (<name> or secret/<name>) "
                                                      "whose JSON value holds fsspec options. Left null, a Prefect "
                                                      "run uses the Variable dynslice-store-block when it is set, "
                                                      "else the worker's environment (AWS_*)")
    device: str = Field("auto", description="auto (cuda if available), cpu, cuda, cuda:1, ...")
    checkpoint_every: int = Field(1, ge=1, description="layers between slicing checkpoints")
    run_name: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
                                 description="the folder under runs/ in the store (default: model, planner, "
                                             "target and slice key)")
    timeouts: TimeoutConfig = Field(TimeoutConfig(), description="how long each stage may run (seconds)")

    @model_validator(mode="after")
    def _recovery_is_not_evaluation(self):
        e, r = self.evaluation, self.recover
        if r.enabled and e.ppl and r.source == e.ppl and r.split == (e.ppl_split or "test"):
            raise ValueError("recover: the training text must differ from the evaluation's perplexity data")
        return self

    @model_validator(mode="after")
    def _selection_is_not_evaluation(self):
        if self.evaluation.ppl and self.selection.source == self.evaluation.ppl and (
                self.selection.split == self.evaluation.ppl_split or self.selection.split is None):
            raise ValueError("selection: the held-out data must differ from the evaluation's perplexity data")
        return self

    @field_validator("store")
    @classmethod
    def _store(cls, value: str) -> str:
        if "://" in value:
            import fsspec

            protocol = value.split("://", 1)[0]
            try:
                fsspec.get_filesystem_class(protocol)
            except ValueError:
                raise ValueError(f"unknown storage protocol {protocol}:// (known: file, s3, gs, az, memory, ...)") \
                    from None
            except ImportError as exc:
                raise ValueError(f"the {protocol}:// store needs a package that is not installed: {exc}") from None
        return value

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if value != "auto" and value.split(":")[0] not in ("cpu", "cuda", "mps", "xpu"):
            raise ValueError(f"unknown device {value!r}: use auto, cpu, cuda, cuda:N or mps")
        return value


class SweepGrid(_Strict):
    """The grid: every combination of these is one plan, sliced and measured on the held-out data."""
    targets: list[float] = Field(default_factory=lambda: [0.2, 0.3], description="plan targets, each in [0, 1)")
    variations: list[float] = Field(default_factory=lambda: [0.0, 0.1],
                                    description="the paper's a; each point uses min(variation, target)")
    planners: list[Literal["constant", "dynamic", "removal", "greedy"]] = Field(
        default_factory=lambda: ["constant", "dynamic"],
        description="planners (constant has no variation; removal and greedy only with the params budget)")
    budgets: list[Literal["mean", "params"]] = Field(default_factory=lambda: ["mean"],
                                                     description="what each target means (see plan.budget)")

    @model_validator(mode="after")
    def _non_empty(self):
        for name in ("targets", "variations", "planners", "budgets"):
            if not getattr(self, name):
                raise ValueError(f"{name} must not be empty")
        for t in self.targets:
            if not 0.0 <= t < 1.0:
                raise ValueError(f"target {t} must be in [0, 1)")
        for a in self.variations:
            if not 0.0 <= a < 1.0:
                raise ValueError(f"variation {a} must be in [0, 1) (each point uses min(variation, target))")
        if "params" not in self.budgets and not set(self.planners) - {"removal", "greedy"}:
            raise ValueError("removal and greedy remove whole layers: add params to budgets")
        return self


Runner = Literal["threads", "dask", "deployments"]


class SweepConfig(CompressConfig):
    """A grid of plans sharing one calibration and one scoring pass; the best on held-out data is evaluated."""
    grid: SweepGrid = Field(SweepGrid(), description="the plans to try")
    runner: Runner = Field("threads", description="where the grid's slicing runs: threads (this process), dask (a "
                                                  "Dask cluster: local, or the scheduler address), deployments "
                                                  "(one run of the compress deployment per grid point, on any "
                                                  "worker of its pool)")
    workers: int = Field(1, ge=1, description="dask: worker processes of the local cluster, i.e. slicing runs at "
                                              "a time (threads: 1; deployments: the pool's workers decide)")
    scheduler: str | None = Field(None, description="dask: address of a running Dask scheduler (tcp://host:8786); "
                                                    "null starts a local cluster of `workers` processes")
    deployment: str = Field("compress/on-demand", description="deployments: the compress deployment each "
                                                              "grid point runs as (flow/deployment)")

    @model_validator(mode="after")
    def _one_thread(self):
        if self.runner == "threads" and self.workers > 1:
            raise ValueError("workers > 1 needs runner: dask (separate processes); models loaded side by side in "
                             "threads of one process can get each other's uninitialised weights")
        return self


def _dotted(errors) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'config'}: {e['msg'].removeprefix('Value error, ')}"
                     for e in errors)


def load_config(data: dict | None, cls: type[CompressConfig] = CompressConfig,
                overrides: list[str] | None = None) -> CompressConfig:
    """Validate a dict (from YAML) plus `a.b=value` overrides (values parsed as YAML scalars)."""
    import yaml

    merged = dict(data or {})
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.field=value")
        dotted, raw = item.split("=", 1)
        node = merged
        *parents, leaf = dotted.strip().split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {dotted}: {part} is not a section")
        try:
            node[leaf] = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise ConfigError(f"override {item!r}: the value is not valid YAML: {exc}") from None
    try:
        return cls.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(f"invalid configuration: {_dotted(exc.errors())}") from None


def read_config(path: str | None, cls: type[CompressConfig] = CompressConfig,
                overrides: list[str] | None = None) -> CompressConfig:
    import fsspec
    import yaml

    data = {}
    if path:
        try:
            with fsspec.open(path, "r", encoding="utf-8") as f:
                data = yaml.safe_load(f) or {}
        except FileNotFoundError:
            raise ConfigError(f"configuration file {path} does not exist") from None
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{path} is not a YAML text file (byte {exc.start} is not UTF-8)") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path} is not valid YAML: {first_line(exc)}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path} must hold a YAML mapping")
    return load_config(data, cls, overrides)
