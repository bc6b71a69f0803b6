"""The batched variable-length attention: one SDPA call over a padded batch equals one call per sequence."""
import pytest
import torch

from metareward.model.attention import Packed, sdpa


def per_sequence(q, k, v, lens):
    return torch.cat([sdpa(qi[None], ki[None], vi[None])[0]
                      for qi, ki, vi in zip(q.split(lens), k.split(lens), v.split(lens))])


def test_packed_padded_call_matches_per_sequence_calls_and_gradients():
    g = torch.Generator().manual_seed(0)
    lens = [7, 5, 9, 6]  # padding costs < 2x: the one-call path
    n = sum(lens)
    q = torch.randn(n, 4, 8, generator=g, dtype=torch.float64, requires_grad=True)
    k = torch.randn(n, 2, 8, generator=g, dtype=torch.float64, requires_grad=True)
    v = torch.randn(n, 2, 8, generator=g, dtype=torch.float64, requires_grad=True)
    attn = Packed(lens)
    got = attn(0, q, k, v)
    assert attn._padding is not None  # it took the padded path
    want = per_sequence(q, k, v, lens)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    grad = torch.randn(got.shape, generator=g, dtype=torch.float64)
    for a, b in zip(torch.autograd.grad(got, (q, k, v), grad), torch.autograd.grad(want, (q, k, v), grad)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_packed_keeps_per_sequence_calls_when_padding_dominates():
    lens = [40, 2, 3, 1]
    q, k, v = torch.randn(46, 2, 4), torch.randn(46, 2, 4), torch.randn(46, 2, 4)
    attn = Packed(lens)
    torch.testing.assert_close(attn(0, q, k, v), per_sequence(q, k, v, lens))
    assert attn._padding is None


@pytest.mark.parametrize("shared", [0, 3])
def test_cpu_decode_matches_the_reference(shared):
    from metareward.engine.attention import CpuDecode
    from metareward.kernels.paged_attention import paged_attention_decode_torch
    g = torch.Generator().manual_seed(shared)
    page, hkv, hq, d = 4, 2, 6, 8
    kc, vc = torch.randn(64, page, hkv, d, generator=g), torch.randn(64, page, hkv, d, generator=g)
    lens = [13, 40, 12, 0, 27, 14, 90 // 7]  # a padding row (0); with shared=3 one context ends at the prefix
    perm = torch.randperm(63, generator=g).tolist()
    prefix, rest = perm[:shared], perm[shared:]
    bt = torch.full((len(lens), 12), 63, dtype=torch.int32)
    for i, n in enumerate(lens):
        own = -(-n // page) - shared if n else 0
        row, rest = prefix + rest[:own], rest[own:]
        bt[i, :len(row)] = torch.tensor(row, dtype=torch.int32)
        if n:  # stale slots past the context: must not leak, even as inf/NaN
            kc.view(-1, hkv, d)[row[-1] * page + (n - 1) % page + 1:(row[-1] + 1) * page] = float("inf")
            vc.view(-1, hkv, d)[row[-1] * page + (n - 1) % page + 1:(row[-1] + 1) * page] = float("nan")
    ctx = torch.tensor(lens, dtype=torch.int32)
    q = torch.randn(len(lens), hq, d, generator=g)
    plan = CpuDecode(bt, ctx, page)
    assert plan.shared == shared
    torch.testing.assert_close(plan(q, kc, vc), paged_attention_decode_torch(q, kc, vc, bt, ctx, d ** -0.5))
