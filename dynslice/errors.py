"""Every error dynslice raises on purpose, in one hierarchy: a caller catches `DynsliceError` for all of them.

`DynsliceError` is not a `ValueError`: code that wraps third-party failures with `except (OSError, ValueError)`
must never catch (and re-wrap) dynslice's own, already actionable, errors.
"""


class DynsliceError(Exception):
    """Base class of every error dynslice raises on purpose; its message says what to do."""


class ConfigError(DynsliceError):
    """A configuration value or command-line argument is missing, misspelt or out of range."""


class UnsupportedArchitectureError(DynsliceError):
    """The model's family (or one of its options) has no rotate-and-slice mapping."""


class PlanError(DynsliceError):
    """A slicing plan or target does not fit the model."""


class ScoreError(PlanError):
    """Layer scores are malformed (NaN, unknown metric) or do not fit the model they are used with."""


class CalibrationError(DynsliceError):
    """Calibration data (or how it is batched) is malformed or holds no usable token."""


class StateError(DynsliceError):
    """A resumable-loop state folder belongs to another run or is incomplete."""


class SourceError(DynsliceError):
    """A model (or tokenizer) source cannot be resolved or loaded."""


class DataError(DynsliceError):
    """A data source cannot be resolved or read, or holds too little text for the sampling asked for."""


class AssetError(DynsliceError):
    """An embedded demo asset cannot be fetched, or fails its checksum."""


class EvaluationError(DynsliceError):
    """An evaluation (perplexity, zero-shot, speed) was asked for with inputs it cannot use."""


class StoreError(DynsliceError):
    """An artifact store URI, key or artifact is malformed, or the store cannot be used."""


class RecoveryError(DynsliceError):
    """Recovery fine-tuning cannot run as asked (peft missing, no shortcuts to adapt) or diverged."""


class HubError(DynsliceError):
    """A model cannot be published to the Hub as asked: not a sliced model, a bad repo id, or refused."""


def first_line(exc: BaseException, limit: int = 300) -> str:
    """An exception's message cut to its first line: an error or a log line never carries a file's contents
    (a decoding error's repr can hold the whole file)."""
    text = str(exc).strip()
    return text.splitlines()[0][:limit] if text else type(exc).__name__
