from .engine import Engine, Output, Sample
from .params import SamplingParams

__all__ = ["Engine", "Output", "Sample", "SamplingParams"]
