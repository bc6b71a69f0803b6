import pytest

from metareward.errors import UserError
from metareward.trainer.schedule import DECAYS, lr_at, warmup_steps

PEAK, TOTAL, WARM, MIN = 1e-3, 110, 10, 0.1  # 100 decay steps after warmup; min lr = 1e-4


def lr(step, kind, min_lr_ratio=MIN):
    return lr_at(step, TOTAL, PEAK, WARM, kind, min_lr_ratio)


@pytest.mark.parametrize("kind", ["cosine", "linear", "constant"])
def test_warmup_is_the_same_for_every_kind(kind):
    assert lr(0, kind) == pytest.approx(PEAK / 11)       # first step already moves
    assert lr(4, kind) == pytest.approx(PEAK * 5 / 11)
    assert lr(9, kind) == pytest.approx(PEAK * 10 / 11)
    assert lr(10, kind) == pytest.approx(PEAK)           # end of warmup: the peak


def test_cosine():
    assert lr(60, "cosine") == pytest.approx(1e-4 + 0.5 * 9e-4)           # halfway: cos(pi/2) = 0
    assert lr(35, "cosine") == pytest.approx(1e-4 + 0.5 * (1 + 0.5 ** 0.5) * 9e-4)  # a quarter: cos(pi/4)
    assert lr(109, "cosine") > 1e-4                                       # the last step still learns
    assert lr(110, "cosine") == pytest.approx(1e-4)                       # end: min
    assert lr(500, "cosine") == pytest.approx(1e-4)
    assert lr(60, "cosine", min_lr_ratio=0.0) == pytest.approx(5e-4)
    seq = [lr(s, "cosine") for s in range(10, 111)]
    assert all(a > b for a, b in zip(seq, seq[1:]))


def test_linear():
    assert lr(60, "linear") == pytest.approx(1e-4 + 0.5 * 9e-4)
    assert lr(30, "linear") == pytest.approx(1e-4 + 0.8 * 9e-4)
    assert lr(109, "linear") == pytest.approx(1e-4 + 0.01 * 9e-4)
    assert lr(110, "linear") == pytest.approx(1e-4)
    assert lr(110, "linear", min_lr_ratio=0.0) == 0.0


def test_constant_stays_at_peak():
    for step in (10, 60, 109, 110, 1000):
        assert lr(step, "constant") == pytest.approx(PEAK)


def test_no_warmup_starts_at_peak():
    assert lr_at(0, 10, 2e-5, 0, "cosine") == pytest.approx(2e-5)
    assert lr_at(5, 10, 2e-5, 0, "linear") == pytest.approx(1e-5)


def test_warmup_over_every_step():
    assert lr_at(4, 5, 1.0, 5, "cosine") == pytest.approx(5 / 6)
    assert lr_at(5, 5, 1.0, 5, "cosine") == 0.0


def test_errors():
    assert set(DECAYS) == {"cosine", "linear", "constant"}
    with pytest.raises(UserError, match="unknown learning-rate schedule 'step'"):
        lr(0, "step")
    with pytest.raises(UserError):
        lr_at(0, 10, 1.0, 11)
    with pytest.raises(UserError):
        lr_at(0, 0, 1.0, 0)
    with pytest.raises(UserError):
        lr(0, "cosine", min_lr_ratio=1.5)
    with pytest.raises(ValueError):
        lr(-1, "cosine")


def test_warmup_steps_from_ratio():
    assert warmup_steps(100, 0.1) == 10
    assert warmup_steps(100, 0.07) == 7  # 100 * 0.07 is 7.000000000000001 in floats
    assert warmup_steps(7, 0.1) == 1   # rounded up: any nonzero ratio warms up
    assert warmup_steps(50, 0.0) == 0
    assert warmup_steps(50, 1.0) == 50
    with pytest.raises(UserError):
        warmup_steps(10, 1.5)
