"""Named exceptions: every bad input is reported before any work starts, with what to do about it."""


class DynsliceError(ValueError):
    """Base class of every error dynslice raises on purpose."""


class UnsupportedArchitectureError(DynsliceError):
    """The model's family (or one of its options) has no rotate-and-slice mapping."""


class PlanError(DynsliceError):
    """A slicing plan or target does not fit the model."""


class CalibrationError(DynsliceError):
    """Calibration data is malformed or holds no usable token."""


class StateError(DynsliceError):
    """A resumable-loop state folder belongs to another run or is incomplete."""


class ScoreError(PlanError):
    """Layer scores are malformed (NaN, unknown metric) or do not fit the model they are used with."""


class SourceError(DynsliceError):
    """A model (or tokenizer) source cannot be resolved or loaded."""


class DataError(DynsliceError):
    """A data source cannot be resolved or read, or holds too little text for the sampling asked for."""


class AssetError(DynsliceError):
    """An embedded demo asset cannot be fetched, or fails its checksum."""


class EvaluationError(DynsliceError):
    """An evaluation (perplexity, zero-shot, speed) was asked for with inputs it cannot use."""
