"""Evaluation of dense and sliced models: perplexity, lm-eval zero-shot accuracy, inference speed.

lm-eval is imported only inside `zero_shot`, so perplexity and speed need nothing beyond the core deps.
"""

from dynslice.evaluation.perplexity import PerplexityResult, perplexity, token_stream
from dynslice.evaluation.speed import SpeedResult, measure_speed, memory_footprint, speed_prompts
from dynslice.evaluation.zeroshot import DEFAULT_TASK, ZeroShotResult, zero_shot

__all__ = ["DEFAULT_TASK", "PerplexityResult", "SpeedResult", "ZeroShotResult", "measure_speed",
           "memory_footprint", "perplexity", "speed_prompts", "token_stream", "zero_shot"]
