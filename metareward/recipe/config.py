"""Settings of the three roles and of pair building (`actor.*`, `judge.*`, `meta_judge.*`, `pairs.*`); any
of them may be a per-iteration list in a run's config. Defaults marked (paper) follow Wu et al. 2024
(arXiv 2407.19594); README's settings table gives the source of each, and which are the project's own."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from ..settings import Settings

Mode = Literal["parse", "expected"]


class Sampling(Settings):
    per_iteration = True
    temperature: float = Field(0.8, ge=0, le=100)
    top_p: float = Field(0.95, gt=0, le=1)
    max_tokens: int = Field(1024, ge=1)


class ActorConfig(Sampling):
    n: int = Field(7, ge=1, le=1024, description="K responses per prompt")
    drop_duplicates: bool = Field(True, description="judge only one of a prompt's identical responses")


class JudgeConfig(Sampling):
    n: int = Field(5, ge=1, le=1024, description="N judgments per response")
    score_mode: Mode = Field("parse", description="parse: the last 'Score: x' line; expected: E[score] from "
                             "the logits after 'Score: '")
    template: str | None = Field(None, description="a prompt file replacing the built-in judge template")


class MetaJudgeConfig(Sampling):
    winner_mode: Mode = Field("parse", description="parse: the last 'Winner: Judgment A|B' line; expected: "
                              "P(A) vs P(B) after 'Winner: Judgment '")
    template: str | None = Field(None, description="a prompt file replacing the built-in meta-judge template")


class PairsConfig(Settings):
    per_iteration = True
    rho: float = Field(0.0, ge=0, le=1, description="length control: top tier >= (1-rho)S_max + rho S_min, "
                       "chosen = its shortest")
    drop_same_score: bool = Field(True, description="drop a judge pair whose judgments give the same score")
    max_judgment_chars: int | None = Field(None, ge=1, description="drop a judge pair whose chosen judgment "
                                           "is longer")
    elo_l2: float = Field(1e-3, gt=0, description="L2 weight on the Elo ratings (finite ratings)")
