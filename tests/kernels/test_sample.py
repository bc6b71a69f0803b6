import math

import pytest
import torch

from metareward.errors import UserError
from metareward.kernels.dispatch import HAS_TRITON
from metareward.kernels.sample import gumbel_noise, processed_probs, sample, sample_torch, sample_triton

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning:triton.runtime.interpreter")  # numpy on -inf
needs_triton = pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
# Launcher overrides that force the kernel's other paths on small rows: 4 gather slots make top-k overflow into the
# bisection and top-p into the rejection rounds; 16-wide tiles give several tiles, online rescaling and skipping.
FALLBACK = dict(block=16, cap=4)


def _logits(V, dtype, seed, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(1, V, generator=g) * scale).to(dtype)


def _chi2_pvalue(counts, probs, n):
    # Pearson's test; bins expected < 5 are pooled. P(chi2_df > stat) = Q(df/2, stat/2).
    expected = probs * n
    big = expected >= 5
    obs = torch.cat([counts[big], counts[~big].sum()[None]])
    exp = torch.cat([expected[big], expected[~big].sum()[None]])
    obs, exp = obs[exp > 0], exp[exp > 0]
    df = len(exp) - 1
    if df == 0:
        return 1.0
    stat = ((obs - exp) ** 2 / exp).sum()
    return float(torch.special.gammaincc(torch.tensor(df / 2), stat / 2))


def _check_distribution(fn, V, dtype, temperature, top_k, top_p, min_p, n=2048, seed=0):
    # n draws in one call: the same logits row n times with seeds 0..n-1
    x = _logits(V, dtype, seed).expand(n, V).contiguous()
    tokens, _ = fn(x, temperature, top_k, top_p, min_p, torch.arange(n), 11)
    probs = processed_probs(x[:1], temperature, top_k, top_p, min_p)[0]
    counts = torch.bincount(tokens, minlength=V).double()
    assert counts[probs == 0].sum() == 0, "sampled a token the filters remove"
    p_value = _chi2_pvalue(counts, probs, n)
    assert p_value > 1e-6, f"chi-square p = {p_value:.2e}"  # seeds fixed: deterministic, false failure ~1e-6


@pytest.mark.parametrize("V,dtype,temperature,top_k,top_p,min_p", [
    (37, torch.float32, 1.0, 0, 1.0, 0.0),  # everything off
    (37, torch.bfloat16, 0.3, 5, 1.0, 0.0),
    (101, torch.float32, 2.0, 0, 0.9, 0.02),
    (101, torch.bfloat16, 1.0, 20, 0.8, 0.05),
    (1000, torch.float32, 1.0, 50, 0.95, 0.0),
    (37, torch.float32, 1.0, 0, 1.0, 0.5),  # min-p large
    (101, torch.float32, 1.0, 0, 0.02, 0.0),  # top-p tiny: the top token only
    (37, torch.bfloat16, 1.5, 1, 1.0, 0.0),  # top-k = 1
])
def test_distribution_matches_processed_probs(kernel_mode, V, dtype, temperature, top_k, top_p, min_p):
    _check_distribution(sample, V, dtype, temperature, top_k, top_p, min_p)


@needs_triton
@pytest.mark.parametrize("V,temperature,top_k,top_p,min_p", [(101, 1.0, 20, 0.8, 0.05), (37, 0.7, 0, 0.9, 0.0)])
def test_distribution_fallback_paths(V, temperature, top_k, top_p, min_p):
    _check_distribution(lambda *a: sample_triton(*a, **FALLBACK), V, torch.float32, temperature, top_k, top_p, min_p,
                        n=1024, seed=1)


def _mixed_batch(seed, B=48, V=101):
    # per-row mixed parameters over flat, peaked, tied and -inf-masked rows
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, V, generator=g) * torch.rand(B, 1, generator=g) * 6
    x[0::4] = x[0::4].round()  # ties everywhere, also at the top-k / top-p boundaries
    x[1::4, :5] += 10  # peaked
    x[2::4][torch.rand(len(x[2::4]), V, generator=g) < 0.3] = float("-inf")
    x[3::8] = 0.0  # all equal
    t = torch.rand(B, generator=g) * 2
    t[::7] = 0.0
    k = torch.randint(-1, V + 2, (B,), generator=g) * (torch.rand(B, generator=g) < 0.6)
    p = torch.where(torch.rand(B, generator=g) < 0.6, torch.rand(B, generator=g), torch.tensor(1.0))
    mp = torch.where(torch.rand(B, generator=g) < 0.4, torch.rand(B, generator=g) * 0.3, torch.tensor(0.0))
    return x, t, k, p, mp, torch.randint(0, 2**62, (B,), generator=g), torch.randint(0, 4096, (B,), generator=g)


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("config", [{}, FALLBACK, dict(block=32, cap=16, rows=16)])
def test_kernel_draws_the_reference_tokens(dtype, config):
    # Same noise, same kept set: the kernel must return the reference's token in every row, on every path, and
    # never one the filters remove.
    x, *args = _mixed_batch(seed=3 if dtype == torch.float32 else 4)
    x = x.to(dtype)
    tokens, logprobs = sample_triton(x, *args, **config)
    ref_tokens, ref_logprobs = sample_torch(x, *args)
    assert torch.equal(tokens, ref_tokens)
    torch.testing.assert_close(logprobs, ref_logprobs, rtol=0, atol=1e-5)
    assert (processed_probs(x, *args[:4]).gather(1, tokens[:, None]) > 0).all()


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_pass1_split_changes_no_bit(dtype):
    # pass 1 runs 1..NC programs per row (more when the batch is small): each chunk's partial results are the same
    # whoever computes them, so tokens and log-probs are bit for bit those of one program per row, and the reference's
    x, *args = _mixed_batch(seed=6, B=24, V=203)
    x = x.to(dtype)
    config = dict(block=16, chunk=32, cap=4)  # 7 chunks of 2 tiles; top-k / top-p overflow into the later passes
    one = sample_triton(x, *args, split=1, **config)
    assert torch.equal(one[0], sample_torch(x, *args)[0])
    for split in (2, 3, 7):
        out = sample_triton(x, *args, split=split, **config)
        assert torch.equal(out[0], one[0]) and torch.equal(out[1], one[1]), split


@needs_triton
@pytest.mark.parametrize("config", [{}, FALLBACK])
def test_top_k_past_the_finite_logits(config):
    # k beyond the finite logits: the k-th value is -inf, the kept set is every finite token; top-k-only batches
    # skip the pass-1 noise, so on the fallback path the kernel must draw its own candidate
    x = torch.full((256, 37), float("-inf"))
    x[:, 3:13] = torch.randn(10, generator=torch.Generator().manual_seed(8))
    seeds = torch.arange(256)
    tokens, _ = sample_triton(x, 1.0, 30, 1.0, 0.0, seeds, 0, **config)
    assert torch.equal(tokens, sample_torch(x, 1.0, 30, 1.0, 0.0, seeds, 0)[0])
    assert ((tokens >= 3) & (tokens < 13)).all() and len(set(tokens.tolist())) == 10


def test_greedy_is_argmax_lowest_index(kernel_mode):
    x = torch.randn(6, 37, generator=torch.Generator().manual_seed(9))
    x[1, [3, 20]] = 9.0  # tie: index 3 wins
    x[2] = 0.0
    tokens, _ = sample(x, torch.tensor([0.0, 0.0, 0.0, -1.0, 0.0, 0.0]), 5, 0.5, 0.1, torch.arange(6), 0)
    expected = x.argmax(1)
    assert expected[1] == 3 and expected[2] == 0
    assert torch.equal(tokens, expected)


def test_row_is_independent_of_its_batch(kernel_mode):
    x, t, k, p, mp, s, o = _mixed_batch(seed=5, B=65)
    alone = sample(x[40:41], t[40:41], k[40:41], p[40:41], mp[40:41], s[40:41], o[40:41])
    batch = sample(x, t, k, p, mp, s, o)
    assert torch.equal(alone[0], batch[0][40:41]) and torch.equal(alone[1], batch[1][40:41])


def test_deterministic_and_keyed_on_seed_and_offset(kernel_mode):
    x = _logits(101, torch.float32, 6).expand(64, 101).contiguous()
    first = sample(x, 1.0, 0, 1.0, 0.0, 9, torch.arange(64))
    assert torch.equal(first[0], sample(x, 1.0, 0, 1.0, 0.0, 9, torch.arange(64))[0])
    assert len(set(first[0].tolist())) > 10  # offset (the sequence position) gives fresh draws
    other = sample(x, 1.0, 0, 1.0, 0.0, 10, torch.arange(64))[0]
    assert (other != first[0]).sum() > 32


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_logprobs_are_raw_log_softmax(kernel_mode, dtype):
    x = (torch.randn(8, 1000, generator=torch.Generator().manual_seed(10)) * 3).to(dtype)
    tokens, logprobs = sample(x, 0.5, 10, 0.9, 0.0, torch.arange(8), 1)
    expected = torch.log_softmax(x.double(), 1).gather(1, tokens[:, None])[:, 0]
    assert logprobs.dtype == torch.float32 and tokens.dtype == torch.int64
    # fp32 math on the exact fp32 value of each logit (bf16 upcasts exactly), so one tolerance for both dtypes
    torch.testing.assert_close(logprobs.double(), expected, rtol=0, atol=2e-5)


def test_scalars_broadcast(kernel_mode):
    x = torch.randn(5, 37, generator=torch.Generator().manual_seed(11))
    full = sample(x, torch.full((5,), 0.8), torch.full((5,), 5), torch.full((5,), 0.9), torch.zeros(5),
                  torch.full((5,), 3), torch.full((5,), 4))
    scalars = sample(x, 0.8, 5, 0.9, 0.0, 3, torch.tensor(4))
    assert torch.equal(full[0], scalars[0]) and torch.equal(full[1], scalars[1])


@pytest.mark.parametrize("logits,kwargs,match", [
    (torch.randn(37), {}, r"\[B, V\]"),
    (torch.randn(2, 37).double(), {}, "float32, bfloat16 or float16"),
    (torch.randn(37, 2).t(), {}, "contiguous"),
    (torch.randn(2, 0), {}, "empty vocabulary"),
    (torch.randn(2, 37), dict(temperature=torch.ones(3)), r"temperature must be a scalar or a \[2\] tensor"),
    (torch.randn(2, 37), dict(top_k=torch.ones(2)), "top_k must be an integer tensor"),
    (torch.randn(2, 37), dict(top_k=5.0), "top_k must be an int"),
    (torch.randn(2, 37), dict(seed="7"), "seed must be an int"),
])
def test_bad_inputs_raise(kernel_mode, logits, kwargs, match):
    args = dict(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=0, offset=0) | kwargs
    with pytest.raises(UserError, match=match):
        sample(logits, **args)


def test_empty_batch(kernel_mode):
    tokens, logprobs = sample(torch.randn(0, 37), 1.0, 0, 1.0, 0.0, 0, 0)
    assert tokens.shape == (0,) and logprobs.shape == (0,)


@pytest.mark.parametrize("kwargs,expected", [
    (dict(), [0.5, 0.3, 0.2]),
    (dict(top_k=1), [1.0, 0.0, 0.0]),
    (dict(top_k=2), [0.625, 0.375, 0.0]),
    (dict(top_p=0.6), [0.625, 0.375, 0.0]),  # mass above token 2 is 0.8 >= 0.6
    (dict(top_p=0.5), [1.0, 0.0, 0.0]),  # mass above token 1 is 0.5, not < 0.5
    (dict(min_p=0.5), [0.625, 0.375, 0.0]),  # keep p >= 0.25
    (dict(top_k=2, top_p=0.6), [1.0, 0.0, 0.0]),  # on the renormalized [0.625, 0.375]: 0.625 >= 0.6
    (dict(temperature=0.5), [25 / 38, 9 / 38, 4 / 38]),  # p^2, renormalized
    (dict(temperature=0.0, top_p=0.1), [1.0, 0.0, 0.0]),
])
def test_processed_probs_by_hand(kwargs, expected):
    x = torch.tensor([[0.5, 0.3, 0.2]]).log()
    args = dict(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0) | kwargs
    torch.testing.assert_close(processed_probs(x, **args)[0], torch.tensor(expected, dtype=torch.float64))


def test_processed_probs_keep_boundary_ties():
    e = math.e
    top_k = processed_probs(torch.tensor([[2.0, 1.0, 1.0, 1.0, 0.0]]), 1.0, 2, 1.0, 0.0)[0]  # 2nd value tied 3x
    z = e**2 + 3 * e
    torch.testing.assert_close(top_k, torch.tensor([e**2 / z, e / z, e / z, e / z, 0.0], dtype=torch.float64))
    top_p = processed_probs(torch.tensor([[0.0, 1.0, 1.0, 1.0, -9.0]]), 1.0, 0, 0.3, 0.0)[0]  # none above the ties
    torch.testing.assert_close(top_p, torch.tensor([0.0, 1 / 3, 1 / 3, 1 / 3, 0.0], dtype=torch.float64))


def test_gumbel_noise_is_gumbel():
    g = gumbel_noise(torch.arange(64), torch.zeros(64, dtype=torch.int64), 4096).double()
    assert abs(g.mean() - 0.5772156649) < 0.01 and abs(g.var() - math.pi**2 / 6) < 0.03
    assert abs((g <= 0).double().mean() - math.exp(-1)) < 0.005  # CDF exp(-exp(-x)) at 0
    assert abs((g > 5).double().mean() - (1 - math.exp(-math.exp(-5)))) < 0.0005
    assert not torch.equal(g[0], g[1])
