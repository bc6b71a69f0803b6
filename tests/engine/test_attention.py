"""The batched variable-length attention: one SDPA call over a padded batch equals one call per sequence."""
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
