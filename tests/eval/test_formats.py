import json
from pathlib import Path

import pytest

from metareward.errors import UserError
from metareward.eval.formats import (answer_id, export_alpaca_eval, export_arena_hard, export_mt_bench,
                                     read_judge_pairs, read_reference_answers, require_answers)
from metareward.judging import load_template
from metareward.judging import parse_pairwise as parse_pairwise_verdict
from metareward.prompts import Prompt, read_prompts
from metareward.prompts import detect_format as detect_prompt_format


def load_pairwise_template(path=None):
    return load_template("pairwise", path)


def pairwise_prompt(q, a, b, template=None):
    return (template or load_pairwise_template()).render(question=q, response_a=a, response_b=b)

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def real(name: str) -> Path:
    path = DATA / name
    if not path.is_file():
        pytest.skip(f"{path} not present")
    return path


def jsonl(path: Path, rows) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def shape(obj):
    # the nesting of keys and value types, not the values
    if isinstance(obj, dict):
        return {k: shape(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [shape(obj[0])] if obj else []
    return "number" if isinstance(obj, (int, float)) and not isinstance(obj, bool) else type(obj).__name__


ALPACA = [{"instruction": "Name a color.", "dataset": "koala", "reference_output": "Blue."},
          {"instruction": "Count to 3.", "dataset": "oasst", "reference_output": "1 2 3"}]
ARENA = [{"question_id": "q1", "category": "arena-hard-v0.1", "cluster": "c", "turns": [{"content": "Hi?"}]},
         {"question_id": "q2", "category": "arena-hard-v0.1", "cluster": "c", "turns": [{"content": "Why?"}]}]
MT = [{"question_id": 81, "category": "writing", "turns": ["Write.", "Shorter."]},
      {"question_id": 101, "category": "math", "turns": ["1+1?", "2+2?"], "reference": ["2", "4"]}]


# ---- prompt sets ----

def test_read_prompt_formats(tmp_path):
    a = read_prompts(jsonl(tmp_path / "a.jsonl", ALPACA))
    assert [(p.id, p.turns) for p in a] == [("0", ("Name a color.",)), ("1", ("Count to 3.",))]
    assert a[0].meta == {"format": "alpaca_eval", "dataset": "koala", "reference_output": "Blue."}

    h = read_prompts(jsonl(tmp_path / "h.jsonl", ARENA))
    assert [(p.id, p.turns, p.meta["format"], p.meta["question_id"]) for p in h] == [
        ("q1", ("Hi?",), "arena_hard", "q1"), ("q2", ("Why?",), "arena_hard", "q2")]

    m = read_prompts(jsonl(tmp_path / "m.jsonl", MT))
    assert (m[1].id, m[1].turns) == ("101", ("1+1?", "2+2?"))
    assert m[1].meta == {"format": "mt_bench", "question_id": 101, "category": "math", "reference": ["2", "4"]}

    g = read_prompts(jsonl(tmp_path / "g.jsonl", [{"prompt": "p0"}, {"id": 7, "prompt": "p1"},
                                                  {"prompt_id": "x", "prompt": "p2", "source": "s"}]))
    assert [(p.id, p.turns) for p in g] == [("0", ("p0",)), ("7", ("p1",)), ("x", ("p2",))]
    assert g[2].meta == {"format": "prompts", "prompt_id": "x", "source": "s"}
    # an explicit format overrides detection
    assert read_prompts(tmp_path / "g.jsonl", format="prompts") == g


def test_detect_prompt_format():
    assert [detect_prompt_format(r) for r in (ALPACA[0], ARENA[0], MT[0], {"prompt": "x"}, {"text": "x"})] == [
        "alpaca_eval", "arena_hard", "mt_bench", "prompts", None]


def test_alpaca_eval_json_list(tmp_path):
    path = tmp_path / "eval.json"
    path.write_text(json.dumps(ALPACA))
    assert [p.turns[0] for p in read_prompts(path)] == ["Name a color.", "Count to 3."]
    assert read_reference_answers(path) == {"0": "Blue.", "1": "1 2 3"}


def test_bad_prompt_files(tmp_path):
    with pytest.raises(UserError, match="unknown prompt format 'vicuna'"):
        read_prompts(jsonl(tmp_path / "a.jsonl", ALPACA), format="vicuna")
    with pytest.raises(UserError, match=r"x\.jsonl:1: cannot tell the prompt format"):
        read_prompts(jsonl(tmp_path / "x.jsonl", [{"text": "hi"}]))
    with pytest.raises(UserError, match=r"b\.jsonl:2: missing field 'instruction'"):
        read_prompts(jsonl(tmp_path / "b.jsonl", [ALPACA[0], {"prompt": "x"}]))
    with pytest.raises(UserError, match=r"c\.jsonl:1: prompt must be a non-empty string or a list of"):
        read_prompts(jsonl(tmp_path / "c.jsonl", [{"prompt": 3}]))
    with pytest.raises(UserError, match=r"d\.jsonl:2: duplicate prompt id 'q1' \(first at .*d\.jsonl:1\)"):
        read_prompts(jsonl(tmp_path / "d.jsonl", [ARENA[0], ARENA[0]]))
    with pytest.raises(UserError, match=r"e\.jsonl:1: a turn must be a string"):
        read_prompts(jsonl(tmp_path / "e.jsonl", [{"question_id": 1, "turns": ["a", 5]}]))
    with pytest.raises(UserError, match=r"f\.jsonl:1: 'turns' is empty"):
        read_prompts(jsonl(tmp_path / "f.jsonl", [{"question_id": 1, "turns": []}]))
    with pytest.raises(UserError, match="file not found"):
        read_prompts(tmp_path / "none.json")
    (tmp_path / "g.json").write_text('{"instruction": "x"}')
    with pytest.raises(UserError, match="expected a non-empty JSON list"):
        read_prompts(tmp_path / "g.json")


def test_turn_messages():
    p = Prompt("1", ("first?", "second?"), "f:1", history=({"role": "system", "content": "be brief"},))
    assert p.messages() == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "first?"}]
    assert p.messages(["one"])[1:] == [{"role": "user", "content": "first?"},
                                       {"role": "assistant", "content": "one"},
                                       {"role": "user", "content": "second?"}]
    with pytest.raises(ValueError):
        p.messages(["one", "two"])


def test_real_prompt_sets():
    alpaca = read_prompts(real("alpaca_eval.jsonl"))
    assert len(alpaca) == 805 and alpaca[0].id == "0" and alpaca[-1].id == "804"
    assert {p.meta["dataset"] for p in alpaca} == {"helpful_base", "koala", "oasst", "selfinstruct", "vicuna"}
    arena = read_prompts(real("arena_hard_v0.1_question.jsonl"))
    assert len(arena) == 500 and all(len(p.turns) == 1 and p.meta["format"] == "arena_hard" for p in arena)
    mt = read_prompts(real("mt_bench_question.jsonl"))
    assert len(mt) == 80 and all(len(p.turns) == 2 for p in mt)
    assert sum("reference" in p.meta for p in mt) == 39 and len({p.meta["category"] for p in mt}) == 8
    seeds = read_prompts(real("seed_prompts.jsonl"))
    assert len(seeds) == 6179 and seeds[0].id == "oasst-0"
    ifeval = read_prompts(real("ifeval_input_data.jsonl"))
    assert len(ifeval) == 541 and ifeval[0].id == str(ifeval[0].meta["key"])


# ---- baseline answers ----

def test_reference_answers_synthetic(tmp_path):
    fastchat = jsonl(tmp_path / "b.jsonl", [
        {"question_id": 81, "answer_id": "x", "model_id": "m", "choices": [{"index": 0, "turns": ["t1", "t2"]}],
         "tstamp": 1.0},
        {"question_id": "q2", "choices": [{"index": 0, "turns": [{"content": "c1", "token_len": 3}]}]}])
    assert read_reference_answers(fastchat) == {"81": "t1", "q2": "c1"}
    with pytest.raises(UserError, match=r"b\.jsonl:2: the answer has 1 turn\(s\), turn 2 was asked for"):
        read_reference_answers(fastchat, turn=1)
    own = jsonl(tmp_path / "own.jsonl", [{"id": "a", "response": "r"}, {"prompt_id": 3, "output": "o"}])
    assert read_reference_answers(own) == {"a": "r", "3": "o"}
    outputs = jsonl(tmp_path / "o.jsonl", [{"instruction": "i", "output": "mine", "reference_output": "ref"}])
    assert read_reference_answers(outputs) == {"0": "mine"}
    with pytest.raises(UserError, match=r"d\.jsonl:2: duplicate id 'a'"):
        read_reference_answers(jsonl(tmp_path / "d.jsonl", [{"id": "a", "response": "r"}] * 2))
    with pytest.raises(UserError, match=r"e\.jsonl:1: missing field 'output'"):
        read_reference_answers(jsonl(tmp_path / "e.jsonl", [{"id": "a", "text": "r"}]))
    with pytest.raises(UserError, match=r"f\.jsonl:1: 'choices' must hold"):
        read_reference_answers(jsonl(tmp_path / "f.jsonl", [{"question_id": 1, "choices": []}]))


def test_require_answers_lists_missing_ids():
    prompts = [Prompt(str(i), ("q",), "f") for i in range(8)]
    require_answers(prompts, {str(i): "a" for i in range(10)}, "b.jsonl")  # extras are fine
    with pytest.raises(UserError, match=r"7 of 8 prompt ids have no answer in b\.jsonl: 1, 2, 3, 4, 5, \.\.\.$"):
        require_answers(prompts, {"0": "a"}, "b.jsonl")


def test_real_reference_answers():
    baseline = read_reference_answers(real("arena_hard_v0.1_baseline_gpt-4-0314.jsonl"))
    questions = read_prompts(real("arena_hard_v0.1_question.jsonl"))
    assert len(baseline) == 500 and set(baseline) == {p.id for p in questions}
    require_answers(questions, baseline, "baseline")
    alpaca = read_reference_answers(real("alpaca_eval.jsonl"))
    assert len(alpaca) == 805 and alpaca["0"].startswith("Several famous actors started their careers")
    ref = read_reference_answers(real("mt_bench_reference_answer_gpt-4.jsonl"), turn=1)
    assert len(ref) == 30 and ref["101"].startswith("If you have just overtaken the last person")
    with pytest.raises(UserError, match="500 of 500 prompt ids have no answer"):
        require_answers(questions, alpaca, "alpaca_eval.jsonl")


# ---- human-labelled judge data ----

def test_llmbar_and_pandalm(tmp_path):
    llmbar = jsonl(tmp_path / "l.jsonl", [{"subset": "s", "input": "q", "output_1": "a", "output_2": "b", "label": 2}])
    assert [(p.question, p.answer_1, p.answer_2, p.label) for p in read_judge_pairs(llmbar, "llmbar")] == [
        ("q", "a", "b", 2)]
    votes = [(2, 2, 1), (0, 0, 2), (1, 2, 0), (1, 1, 1)]
    rows = [{"instruction": "Do", "input": "this" if k % 2 else "", "response1": "r1", "response2": "r2",
             **{f"annotator{a + 1}": v for a, v in enumerate(vs)}} for k, vs in enumerate(votes)]
    pandalm = read_judge_pairs(jsonl(tmp_path / "p.jsonl", rows), "pandalm")
    assert [p.label for p in pandalm] == [2, 0, 0, 1]  # majority; one vote each → tie
    assert [p.question for p in pandalm[:2]] == ["Do", "Do\n\nthis"]
    assert pandalm[0].meta["votes"] == [2, 2, 1]
    scalar = read_judge_pairs(jsonl(tmp_path / "s.jsonl", [rows[0] | {"response1": True, "response2": 3}]), "pandalm")
    assert (scalar[0].answer_1, scalar[0].answer_2) == ("True", "3")  # PandaLM stores 6 answers as `true`


def test_pairs_are_swapped_by_a_seeded_coin(tmp_path):
    rows = [{"prompt": f"q{i}", "chosen": f"good{i}", "rejected": f"bad{i}"} for i in range(200)]
    path = jsonl(tmp_path / "pairs.jsonl", rows)
    pairs = read_judge_pairs(path, "pairs", seed=1)
    assert pairs == read_judge_pairs(path, "pairs", seed=1) != read_judge_pairs(path, "pairs", seed=2)
    for i, p in enumerate(pairs):
        better = p.answer_1 if p.label == 1 else p.answer_2
        assert (p.question, better, {p.answer_1, p.answer_2}) == (f"q{i}", f"good{i}", {f"good{i}", f"bad{i}"})
    assert 70 < sum(p.label == 2 for p in pairs) < 130
    assert all(p.label == 1 and p.answer_1.startswith("good") for p in read_judge_pairs(path, "pairs", seed=None))


def test_bad_judge_data(tmp_path):
    row = {"input": "q", "output_1": "a", "output_2": "b", "label": 1}
    path = jsonl(tmp_path / "l.jsonl", [row, row | {"label": 0}])
    with pytest.raises(UserError, match=r"l\.jsonl:2: label must be one of 1, 2, got 0"):
        read_judge_pairs(path, "llmbar")
    with pytest.raises(UserError, match=r"l\.jsonl:1: field 'label' must be an integer, got bool"):
        read_judge_pairs(jsonl(tmp_path / "l.jsonl", [row | {"label": True}]), "llmbar")
    with pytest.raises(UserError, match=r"p\.jsonl:1: annotator2 must be one of 0, 1, 2, got 3"):
        read_judge_pairs(jsonl(tmp_path / "p.jsonl", [{"instruction": "i", "response1": "a", "response2": "b",
                                                       "annotator1": 1, "annotator2": 3, "annotator3": 1}]), "pandalm")
    with pytest.raises(UserError, match=r"t\.jsonl:1: missing field 'rejected'"):
        read_judge_pairs(jsonl(tmp_path / "t.jsonl", [{"prompt": "q", "chosen": "a"}]), "pairs")
    with pytest.raises(UserError, match="unknown judge data format 'mtbench'"):
        read_judge_pairs(path, "mtbench")


def test_real_judge_data():
    llmbar = read_judge_pairs(real("llmbar_pairwise_judge_eval.jsonl"), "llmbar")
    assert len(llmbar) == 885 and sorted({p.label for p in llmbar}) == [1, 2]
    assert sum(p.meta["subset"] == "LLMBar/Natural" for p in llmbar) == 100
    pandalm = read_judge_pairs(real("pandalm_testset_v1_human.jsonl"), "pandalm")
    assert len(pandalm) == 999
    assert sum(len(set(p.meta["votes"])) == 1 and p.label != 0 for p in pandalm) == 794
    assert sum(p.meta["votes"] == [0, 0, 0] for p in pandalm) == 85
    assert pandalm[157].answer_1 == "True" and pandalm[0].question.endswith("\n\nIf you have any questions about "
                                                                            "my rate or if you find it necessary "
                                                                            "to increase or decrease the scope for "
                                                                            "this project, please let me know.")


# ---- exports ----

def test_export_alpaca_eval(tmp_path):
    prompts = read_prompts(jsonl(tmp_path / "a.jsonl", ALPACA))
    out = tmp_path / "out" / "model_outputs.json"
    export_alpaca_eval(out, prompts, {"0": "Red.", "1": "one two three"}, "mr-iter2")
    assert json.loads(out.read_text()) == [
        {"instruction": "Name a color.", "output": "Red.", "generator": "mr-iter2", "dataset": "koala"},
        {"instruction": "Count to 3.", "output": "one two three", "generator": "mr-iter2", "dataset": "oasst"}]
    assert read_reference_answers(out) == {"0": "Red.", "1": "one two three"}  # usable as a later baseline
    assert [p.name for p in out.parent.iterdir()] == ["model_outputs.json"]  # no temporary file left
    with pytest.raises(UserError, match="1 of 2 prompt ids have no answer in the model's answers: 1"):
        export_alpaca_eval(out, prompts, {"0": "Red."}, "m")
    arena = read_prompts(jsonl(tmp_path / "h.jsonl", ARENA))
    with pytest.raises(UserError, match="alpaca_eval export needs the alpaca_eval question set"):
        export_alpaca_eval(out, arena, {"q1": "x", "q2": "y"}, "m")


def test_export_arena_hard(tmp_path):
    prompts = read_prompts(jsonl(tmp_path / "h.jsonl", ARENA))
    out = tmp_path / "m.jsonl"
    export_arena_hard(out, prompts, {"q1": "Hello.", "q2": "Because."}, "mr", {"q1": 2, "q2": 3}, tstamp=17.5)
    rows = read_rows(out)
    assert rows[0] == {"question_id": "q1", "answer_id": answer_id("mr", "q1", ["Hello."]), "model_id": "mr",
                       "choices": [{"index": 0, "turns": [{"content": "Hello.", "token_len": 2}]}], "tstamp": 17.5}
    assert [list(r) for r in rows] == [["question_id", "answer_id", "model_id", "choices", "tstamp"]] * 2
    assert read_reference_answers(out) == {"q1": "Hello.", "q2": "Because."}
    first = out.read_bytes()
    export_arena_hard(out, prompts, {"q1": "Hello.", "q2": "Because."}, "mr", {"q1": 2, "q2": 3}, tstamp=17.5)
    assert out.read_bytes() == first  # reproducible
    with pytest.raises(UserError, match="no answer in the token counts: q2"):
        export_arena_hard(out, prompts, {"q1": "a", "q2": "b"}, "mr", {"q1": 1})

    baseline = real("arena_hard_v0.1_baseline_gpt-4-0314.jsonl")
    questions = read_prompts(real("arena_hard_v0.1_question.jsonl"))
    ref = read_reference_answers(baseline)
    export_arena_hard(out, questions, ref, "mr", {k: len(v.split()) for k, v in ref.items()}, tstamp=1.0)
    ours, theirs = read_rows(out), read_rows(baseline)
    assert {shape(r) == shape(theirs[0]) for r in ours + theirs} == {True}
    assert {r["question_id"] for r in ours} == {r["question_id"] for r in theirs}


def test_export_mt_bench(tmp_path):
    prompts = read_prompts(jsonl(tmp_path / "m.jsonl", MT))
    out = tmp_path / "mr.jsonl"
    export_mt_bench(out, prompts, {"81": ["w1", "w2"], "101": ("2", "4")}, "mr", tstamp=3.0)
    rows = read_rows(out)
    assert rows[1] == {"question_id": 101, "answer_id": answer_id("mr", 101, ["2", "4"]), "model_id": "mr",
                       "choices": [{"index": 0, "turns": ["2", "4"]}], "tstamp": 3.0}
    assert rows[0]["answer_id"] != rows[1]["answer_id"] and len(rows[0]["answer_id"]) == 22
    with pytest.raises(UserError, match="question 81: expected 2 answer strings, got 1"):
        export_mt_bench(out, prompts, {"81": ["w1"], "101": ["2", "4"]}, "mr")
    with pytest.raises(UserError, match="mt_bench export needs the mt_bench question set"):
        export_mt_bench(out, read_prompts(jsonl(tmp_path / "g.jsonl", [{"prompt": "x"}])), {"0": ["a"]}, "mr")

    reference = read_rows(real("mt_bench_reference_answer_gpt-4.jsonl"))  # FastChat's own answer layout
    questions = read_prompts(real("mt_bench_question.jsonl"))
    export_mt_bench(out, questions, {p.id: [f"a{p.id}", "b"] for p in questions}, "mr")
    ours = read_rows(out)
    assert len(ours) == 80 and all(shape(r) == shape(reference[0]) for r in ours)
    assert [r["question_id"] for r in ours] == [p.meta["question_id"] for p in questions]


# ---- the pairwise judge prompt ----

def test_pairwise_prompt(tmp_path):
    text = pairwise_prompt("What is {response_b}?", "first", "second")
    assert "What is {response_b}?" in text  # one pass: text inside a field is not substituted again
    assert text.index("[Question]\nWhat is") < text.index("[Response A]\nfirst") < text.index("[Response B]\nsecond")
    assert text.splitlines()[-3:] == ["Winner: A", "Winner: B", "Winner: tie"]
    default = load_pairwise_template()
    for name in ("{question}", "{response_a}", "{response_b}"):
        assert default.text.count(name) == 1
    mine = tmp_path / "mine.txt"
    mine.write_text("Q: {question}\nA: {response_a}\nB: {response_b}\n{json: 1}\n")
    custom = load_pairwise_template(mine)
    assert pairwise_prompt("q", "a", "b", custom) == "Q: q\nA: a\nB: b\n{json: 1}"
    mine.write_text("Q: {question}\nA: {response_a}\n")
    with pytest.raises(UserError, match=r"mine\.txt: the pairwise template is missing placeholder\(s\) \{response_b\}"):
        load_pairwise_template(mine)
    with pytest.raises(UserError, match="pairwise template not found"):
        load_pairwise_template(tmp_path / "none.txt")


@pytest.mark.parametrize("text, verdict", [
    ("Both are fine.\nWinner: A", "A"),
    ("winner: b", "B"),
    ("Reasoning...\n**Winner:** Tie.", "tie"),
    ("**Winner: Response B**", "B"),
    ("Winner: A\nOn reflection...\nWinner: B\n", "B"),  # the last verdict line wins
    ("I considered Winner: A but no verdict line", None),
    ("Winner: Alice", None),
    ("Response A is better.", None),
    ("", None),
])
def test_parse_pairwise_verdict(text, verdict):
    assert parse_pairwise_verdict(text) == verdict
