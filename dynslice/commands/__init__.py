"""Subcommands of the `dynslice` CLI (one module each) and the options they share."""

import argparse

from dynslice.commands import options
from dynslice.config import CalibrationConfig, ModelConfig
from dynslice.errors import ConfigError

MODEL_FLAGS = {"source": "--model", "revision": "--revision", "dtype": "--dtype"}
CALIBRATION_FLAGS = {"source": "--calib", "split": "--split", "nsamples": "--nsamples", "seqlen": "--seqlen",
                     "seed": "--seed", "batch_size": "--batch-size", "glue": "--glue", "pad_short": "--pad-short"}


def read_text(path: str, option: str) -> str:
    """A small text file named on the command line (local or fsspec URI); ConfigError naming the option."""
    import fsspec

    try:
        with fsspec.open(path, "r", encoding="utf-8") as f:
            return f.read()
    except FileNotFoundError:
        raise ConfigError(f"{option}: no such file {path}") from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{option}: cannot read {path} ({type(exc).__name__})") from None


def check_positions(model: ModelConfig, seqlen: int) -> None:
    """Windows longer than a local model's positions are refused before its weights are loaded."""
    from dynslice.calibration import check_length
    from dynslice.sources import classify_source, demo_folder

    kind = classify_source(model.source)
    if kind not in ("folder", "sliced", "demo"):
        return  # hub ids, URIs and GGUF files are checked once loaded
    import json

    from dynslice.locations import local_path

    folder = demo_folder(model.source) if kind == "demo" else local_path(model.source)
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    check_length(seqlen, config.get("max_position_embeddings"))


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def add_model(p: argparse.ArgumentParser) -> None:
    options.add(p, ModelConfig, MODEL_FLAGS)
    p.add_argument("--device", default="auto", help="compute device: auto (cuda when available), cpu, cuda, cuda:N")


def add_model_and_calibration(p: argparse.ArgumentParser) -> None:
    """The model and calibration options shared by commands that run the model over calibration text."""
    add_model(p)
    options.add(p, CalibrationConfig, CALIBRATION_FLAGS)


def model_config(args: argparse.Namespace) -> ModelConfig:
    return options.build(ModelConfig, args, MODEL_FLAGS)


def calibration_config(args: argparse.Namespace) -> CalibrationConfig:
    return options.build(CalibrationConfig, args, CALIBRATION_FLAGS)
