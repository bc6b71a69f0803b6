"""The SmolLM2 recipe's judge and meta-judge templates (examples/templates/) on the real model: SmolLM2-135M-
Instruct writes no `Score:` line after the default one-message judge prompt, and does after the few-shot
conversation templates. Greedy, so the test reads the same text on every run of one machine; the bounds leave
room for another CPU's rounding."""
from pathlib import Path

import metareward
from metareward.engine import Engine, SamplingParams
from metareward.judging import load_template, scores, winners

ROOT = Path(__file__).resolve().parents[2]
TEMPLATES = ROOT / "examples" / "templates"
ITEMS = [
    ("How many legs does a spider have?", "A spider has eight legs."),
    ("How many legs does a spider have?", "Spiders are scary and live in webs."),
    ("Give me a synonym for 'happy'.", "Joyful."),
    ("What is the boiling point of water at sea level?", "Water boils at 100 degrees Celsius at sea level."),
    ("Write a haiku about autumn.", "I cannot help with that."),
    ("Suggest a name for a pet goldfish.", "You could call it Bubbles, since goldfish blow bubbles."),
]


def test_smollm2_writes_score_and_winner_lines_with_the_recipe_templates(smollm2_dir):
    model, tok = metareward.load_model(smollm2_dir, dtype="float32", device="cpu")
    engine = Engine(model, tok, kv_cache_memory=2**28)
    greedy = SamplingParams(temperature=0, max_tokens=16)
    default = scores(engine, ITEMS, greedy, mode="parse", template=load_template("judge"))
    shots = scores(engine, ITEMS, greedy, mode="parse",
                   template=load_template("judge", TEMPLATES / "smollm2_judge.txt"))
    parsed = [g[0].value for g in shots]
    assert sum(g[0].value is not None for g in default) <= 1, [g[0].text for g in default]
    assert sum(v is not None for v in parsed) >= 5, [g[0].text for g in shots]
    assert all(v is None or 0 <= v <= 5 for v in parsed)

    meta = load_template("meta_judge", TEMPLATES / "smollm2_meta_judge.txt")
    q, r = ITEMS[1]
    a, b = "The response is about spiders but does not say how many legs.\nScore: 1", "Correct and clear.\nScore: 5"
    got = winners(engine, [(q, r, a, b), (q, r, b, a)], greedy, mode="parse", template=meta)
    assert all(g[0].value in ("first", "second") for g in got), [g[0].text for g in got]
