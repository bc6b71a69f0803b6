"""Asking a model to judge: prompt templates (templates.py), reading a value from a judge's text or logits
(parse.py), and running the requests on an engine (requests.py). Below both the recipe and the evaluation,
importing neither."""
from .parse import expected_value, expected_winner, mean_score, parse_pairwise, parse_score, parse_winner
from .requests import MODES, Judged, judge, scores, verdicts, winners
from .templates import Template, load_template

__all__ = ["MODES", "Judged", "Template", "expected_value", "expected_winner", "judge", "load_template",
           "mean_score", "parse_pairwise", "parse_score", "parse_winner", "scores", "verdicts", "winners"]
