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
