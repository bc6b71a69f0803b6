"""metareward: Meta-Rewarding (Wu et al. 2024) as one engine on shared weights."""
from ._version import __version__
from .errors import UserError
from .model import load_model, save_model

__all__ = ["__version__", "UserError", "load_model", "save_model"]
