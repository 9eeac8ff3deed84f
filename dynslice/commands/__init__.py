"""Subcommands of the `dynslice` CLI (one module each) and the options they share."""

import argparse

from dynslice.commands import options
from dynslice.config import CalibrationConfig, ModelConfig

MODEL_FLAGS = {"source": "--model", "revision": "--revision", "dtype": "--dtype"}
CALIBRATION_FLAGS = {"source": "--calib", "split": "--split", "nsamples": "--nsamples", "seqlen": "--seqlen",
                     "seed": "--seed", "batch_size": "--batch-size"}


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
