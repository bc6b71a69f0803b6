import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from metareward.errors import UserError
from metareward.judging.parse import parse_score
from metareward.judging.templates import ROLES, default_path, load_template, render


@pytest.mark.parametrize("role", list(ROLES))
def test_defaults_load_and_hold_their_placeholders(role):
    t = load_template(role)
    assert t.role == role and t.path == str(default_path(role))
    for name in ROLES[role]:
        assert t.text.count("{" + name + "}") == 1
    assert t.text == t.text.rstrip()


def test_default_judge_renders_the_rubric_and_the_score_format():
    t = load_template("judge")
    out = t.render(question="What is 2+2?", response="4.")
    assert "What is 2+2?" in out and "\n4.\n" in out
    assert "{" not in out
    assert out.splitlines()[-1] == "Score: <points>"
    assert parse_score(out) is None  # the format line itself is not a score
    rubric = [line for line in out.splitlines() if re.match(r"[1-5]\. ", line)]
    assert [line[0] for line in rubric] == ["1", "2", "3", "4", "5"]


def test_default_meta_judge_shares_the_rubric_and_ends_with_the_verdict_format():
    judge, meta = load_template("judge").text, load_template("meta_judge").text
    rubric = [line for line in judge.splitlines() if re.match(r"[1-5]\. ", line)]
    assert len(rubric) == 5
    for line in rubric:
        assert line in meta.splitlines()
    out = load_template("meta_judge").render(question="q", response="r", judgment_a="ja\nScore: 4",
                                              judgment_b="jb\nScore: 2")
    assert out.index("ja") < out.index("jb")
    assert out.splitlines()[-2:] == ["Winner: Judgment A", "Winner: Judgment B"]
    assert "{" not in out


def test_user_text_with_braces_and_backslashes_survives():
    t = load_template("meta_judge")
    values = {"question": "Fill {response} and {judgment_a} in: f'{x}' {{y}} {}",
              "response": "def f():\n    return {'a': 1}  # \\1 \\g<0> %s",
              "judgment_a": "{question}", "judgment_b": "Score: {4}"}
    out = t.render(**values)
    for v in values.values():
        assert v in out
    # what the values brought in was not substituted again
    assert out.count("{question}") == 1 and out.count("{response}") == 1


@settings(max_examples=100, deadline=None)
@given(st.text(), st.text())
def test_render_inserts_values_verbatim(q, r):
    out = render("<<{question}>>{other}[[{response}]]", ("question", "response"), {"question": q, "response": r})
    assert out == "<<" + q + ">>{other}[[" + r + "]]"


def test_render_leaves_unknown_braces_alone():
    text = "{question} {judgment_a} {{question}} {0} { question }"
    assert render(text, ("question",), {"question": "Q"}) == "Q {judgment_a} {Q} {0} { question }"


def test_render_wants_exactly_the_role_values():
    t = load_template("judge")
    with pytest.raises(ValueError, match="exactly"):
        t.render(question="q")
    with pytest.raises(ValueError, match="exactly"):
        t.render(question="q", response="r", judgment_a="x")
    with pytest.raises(TypeError):
        t.render(question="q", response=3)


def test_user_file(tmp_path):
    f = tmp_path / "mine.txt"
    f.write_text("\ufeffQ: {question}\nA: {response}\nGrade it. {not_a_placeholder}\n\n", encoding="utf-8")
    t = load_template("judge", f)
    assert t.path == str(f)
    assert t.text == "Q: {question}\nA: {response}\nGrade it. {not_a_placeholder}"  # BOM, trailing newlines gone
    assert t.render(question="a {b}", response="c") == "Q: a {b}\nA: c\nGrade it. {not_a_placeholder}"


def test_missing_placeholder_names_file_and_placeholders(tmp_path):
    f = tmp_path / "meta.txt"
    f.write_text("{question} {response} {judgment_b} {Judgment_A}")
    with pytest.raises(UserError) as e:
        load_template("meta_judge", f)
    msg = str(e.value)
    assert str(f) in msg and "{judgment_a}" in msg and "{judgment_b}" not in msg and "\n" not in msg
    g = tmp_path / "judge.txt"
    g.write_text("nothing here")
    with pytest.raises(UserError, match=r"\{question\}, \{response\}"):
        load_template("judge", g)


def test_unreadable_or_absent_file(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_template("judge", tmp_path / "absent.txt")
    with pytest.raises(UserError, match="not found"):
        load_template("judge", tmp_path)  # a directory
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("{question} {response} caf\xe9".encode("latin-1"))
    with pytest.raises(UserError, match="cannot read"):
        load_template("judge", bad)


def test_unknown_role():
    with pytest.raises(ValueError, match="unknown template role"):
        load_template("actor")



CONVERSATION = """===== system
You grade. Reply 'Score: N'.
===== user
Question: Name a color.
Response: {not a placeholder} Blue.
===== assistant
Score: 5

===== user
Question: {question}
Response: {response}
"""


def test_conversation_template_renders_messages_and_the_judge_sees_them(tmp_path):
    f = tmp_path / "judge.txt"
    f.write_text(CONVERSATION)
    t = load_template("judge", f)
    msgs = t.render(question="2+2? {response}", response="4")
    assert msgs == [{"role": "system", "content": "You grade. Reply 'Score: N'."},
                    {"role": "user", "content": "Question: Name a color.\nResponse: {not a placeholder} Blue."},
                    {"role": "assistant", "content": "Score: 5"},
                    {"role": "user", "content": "Question: 2+2? {response}\nResponse: 4"}]
    # through the engine: exactly the chat template's tokens of those messages
    from metareward import load_model
    from metareward.engine import Engine, SamplingParams
    from metareward.judging import scores
    from metareward.model.tokenizer import chat_ids
    model, tok = load_model("tiny-random")
    engine = Engine(model, tok, kv_cache_memory=2**24)
    got = scores(engine, [("2+2? {response}", "4")], SamplingParams(max_tokens=3, temperature=0), mode="parse",
                 template=t)
    want = engine.generate([chat_ids(tok, msgs)], SamplingParams(max_tokens=3, temperature=0))
    assert got[0][0].text == want[0].samples[0].text


@pytest.mark.parametrize("text, message", [
    ("preamble\n===== user\n{question} {response}", "text before the first"),
    ("===== user\n{question} {response}\n===== assistant\nScore: 1", "last section must be '===== user'"),
    ("===== user\nq\n===== system\ns\n===== user\n{question} {response}", "system section may only come first"),
    ("===== system\n\n===== user\n{question} {response}", "section at line 1 is empty"),
    ("===== user\n{question}\n===== user\n{response}", r"missing placeholder\(s\) \{question\} in its last"),
])
def test_conversation_template_errors(tmp_path, text, message):
    f = tmp_path / "judge.txt"
    f.write_text(text)
    with pytest.raises(UserError, match=message) as e:
        load_template("judge", f)
    assert str(f) in str(e.value)
