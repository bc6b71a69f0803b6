"""Evaluation inside a run (`eval.*`): after every iteration's training, the new model M_t is measured, and
M_0 once before the first iteration. Three optional measurements, each off while its data file is null:
a head-to-head win rate on held-out prompts (judged in both orders), IFEval's objective instruction checks,
and the model's agreement as a judge with human labels (LLMBar-style pairs)."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from ..settings import Settings


class WinRateConfig(Settings):
    prompts: str | None = Field(None, description="held-out prompts (any format `metareward eval` reads); "
                                "null: no win rate")
    num_prompts: int = Field(256, ge=1, description="the first N of them")
    baseline: Literal["previous", "initial"] = Field("initial", description="M_t against M_(t-1) or M_0")
    judge: str = Field("initial", description="initial: M_0 (loaded again while it judges), or a model directory")
    max_tokens: int = Field(512, ge=1, description="answer length (greedy)")
    judge_max_tokens: int = Field(512, ge=1)
    verdict_mode: Literal["parse", "expected"] = "parse"
    template: str | None = Field(None, description="a pairwise judge prompt file")


class IFEvalConfig(Settings):
    data: str | None = Field(None, description="IFEval input data (JSONL); null: no IFEval")
    limit: int | None = Field(None, ge=1, description="the first N prompts")
    max_tokens: int = Field(512, ge=1)


class JudgeAgreementConfig(Settings):
    data: str | None = Field(None, description="human-labelled pairs; null: no judge agreement")
    format: Literal["llmbar", "pandalm", "pairs"] = "llmbar"
    limit: int | None = Field(None, ge=1, description="the first N rows (a fixed subset)")
    mode: Literal["parse", "expected"] = "parse"
    max_tokens: int = Field(512, ge=1)


class EvalConfig(Settings):
    winrate: WinRateConfig = WinRateConfig()
    ifeval: IFEvalConfig = IFEvalConfig()
    judge_agreement: JudgeAgreementConfig = JudgeAgreementConfig()

    @property
    def enabled(self) -> bool:
        return any(x is not None for x in (self.winrate.prompts, self.ifeval.data, self.judge_agreement.data))
