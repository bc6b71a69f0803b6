# tests/kernels/conftest.py sets TRITON_INTERPRET=1 without CUDA (before this import) and gives kernel_mode
import itertools

import pytest
import torch
import torch.nn.functional as F

from metareward.errors import UserError
from metareward.kernels import linear_logprobs as ll
from metareward.kernels.dispatch import HAS_TRITON

DEV = "cuda" if torch.cuda.is_available() else "cpu"
IGNORE = -100

# Protocol (Cut Cross-Entropy): the fast path and torch's naive path in the same dtype (full logits in that
# dtype, log_softmax in fp32) are both measured against float64 math on the same rounded inputs; the fast
# path's error, relative to max |float64 value|, may exceed the naive one by at most TOL: one unit in the
# last place at 1.0 for bf16 (2^-8) and fp16 (2^-11): both paths round dlogits to that dtype, not always the
# same way (seen: fast <= naive + 1.3e-3 in bf16). fp32: 2e-6 (seen: +2e-7).
TOL = {torch.float32: 2e-6, torch.bfloat16: 4e-3, torch.float16: 5e-4}

NS, HS, VS, DTYPES = (1, 37, 130), (19, 64), (37, 101, 1000), (torch.float32, torch.bfloat16)
FULL = list(itertools.product(NS, HS, VS, DTYPES))
# The interpreter costs ~1 s per fwd+bwd at N=130, V=1000: cover every value of every dimension once per mode.
INTERPRETED = [(1, 64, 1000, torch.bfloat16), (37, 19, 101, torch.float32), (130, 64, 37, torch.float32),
               (130, 19, 1000, torch.bfloat16), (37, 64, 101, torch.float16)]
CASES = [pytest.param("torch", *c, id=f"torch-{c[0]}x{c[1]}x{c[2]}-{str(c[3])[6:]}") for c in FULL]
CASES += [pytest.param("triton", *c, id=f"triton-{c[0]}x{c[1]}x{c[2]}-{str(c[3])[6:]}",
                       marks=pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed"))
          for c in (FULL if DEV == "cuda" else INTERPRETED)]


def make_case(n, h, v, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=g).to(DEV, dtype)
    weight = (torch.randn(v, h, generator=g) * 3 / h**0.5).to(DEV, dtype)  # logits ~ N(0, 9): peaked rows
    targets = torch.randint(0, v, (n,), generator=g)
    targets[1::4] = IGNORE
    grad_out = torch.randn(n, generator=g)
    grad_out[2::7] = 0.0
    return hidden, weight, targets.to(DEV), grad_out.to(DEV)


def naive(hidden, weight, targets, ignore_index=IGNORE):  # float64 inputs make this the exact truth
    logits = hidden @ weight.t()  # [N, V] in the input dtype
    logp = torch.log_softmax(logits if logits.dtype == torch.float64 else logits.float(), -1)
    picked = logp.gather(1, targets.clamp(min=0)[:, None])[:, 0]
    return torch.where(targets != ignore_index, picked, 0.0)


def run(fn, hidden, weight, targets, grad_out):
    hidden = hidden.detach().clone().requires_grad_()
    weight = weight.detach().clone().requires_grad_()
    out = fn(hidden, weight, targets)
    assert out.shape == targets.shape and out.dtype == (torch.float64 if hidden.dtype == torch.float64 else torch.float32)
    out.backward(grad_out.to(out.dtype))
    return [x.detach().double() for x in (out, hidden.grad, weight.grad)]


def rel_err(x, truth):
    return ((x - truth).abs().max() / truth.abs().max().clamp(min=1e-30)).item()


def check_against_float64(fast, ref, exact, dtype, names=("logp", "grad_hidden", "grad_weight")):
    for name, f, r, e in zip(names, fast, ref, exact):
        assert torch.isfinite(f).all(), name
        err_fast, err_ref = rel_err(f, e), rel_err(r, e)
        assert err_fast <= err_ref + TOL[dtype], f"{name}: fast {err_fast:.3g} vs naive {err_ref:.3g} ({dtype})"


@pytest.mark.parametrize("mode,n,h,v,dtype", CASES)
def test_matches_float64_and_naive(mode, n, h, v, dtype, monkeypatch):
    monkeypatch.setenv("METAREWARD_KERNELS", mode)
    hidden, weight, targets, grad_out = make_case(n, h, v, dtype)
    fast = run(ll.linear_logprobs, hidden, weight, targets, grad_out)
    ref = run(naive, hidden, weight, targets, grad_out)
    exact = run(naive, hidden.double(), weight.double(), targets, grad_out.double())
    check_against_float64(fast, ref, exact, dtype)
    assert (fast[0][targets == IGNORE] == 0).all()


def test_chunked_paths_match_float64(kernel_mode, monkeypatch):
    # force many vocabulary chunks (last one ragged) in both paths' backward and the torch forward
    monkeypatch.setattr(ll, "DLOGITS_CHUNK_BYTES", 37 * 128 * 4)  # Triton: Vc=128 -> 8 chunks of V=1000
    monkeypatch.setattr(ll, "TORCH_CHUNK_ELEMENTS", 37 * 300)  # torch: Vc=300 -> 4 chunks
    hidden, weight, targets, grad_out = make_case(37, 19, 1000, torch.float32, seed=1)
    fast = run(ll.linear_logprobs, hidden, weight, targets, grad_out)
    exact = run(naive, hidden.double(), weight.double(), targets, grad_out.double())
    for f, e in zip(fast, exact):
        assert rel_err(f, e) < 1e-5


def test_torch_reference_matches_float64_on_its_own():  # the oracle is itself checked, with no dispatch
    hidden, weight, targets, grad_out = make_case(130, 64, 1000, torch.bfloat16, seed=2)
    fast = run(ll.linear_logprobs_torch, hidden, weight, targets, grad_out)
    ref = run(naive, hidden, weight, targets, grad_out)
    exact = run(naive, hidden.double(), weight.double(), targets, grad_out.double())
    check_against_float64(fast, ref, exact, torch.bfloat16)


def test_ignored_rows_give_zero_and_no_gradient(kernel_mode):
    hidden, weight, targets, grad_out = make_case(37, 19, 101, torch.float32, seed=3)
    targets[targets == IGNORE] = 7  # a custom ignore_index that is also a real token id
    targets[:3] = 7
    out, gh, gw = run(lambda h, w, t: ll.linear_logprobs(h, w, t, ignore_index=7), hidden, weight, targets, grad_out)
    keep = targets != 7
    assert (out[~keep] == 0).all() and (gh[~keep] == 0).all() and (out[keep] != 0).all()
    sub = run(ll.linear_logprobs, hidden[keep], weight, targets[keep], grad_out[keep])
    torch.testing.assert_close(out[keep], sub[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gh[keep], sub[1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gw, sub[2], rtol=1e-5, atol=1e-5)


def test_tied_weight_used_twice_accumulates(kernel_mode):
    # embedding and lm_head share one tensor; two calls (chosen, rejected) both add into its gradient
    def loss(weight, ids, t1, t2, g1, g2, fn):
        hidden = torch.tanh(F.embedding(ids, weight))  # [N, H]
        return (fn(hidden, weight, t1) * g1).sum() + (fn(hidden.flip(0), weight, t2) * g2).sum()

    _, weight, t1, g1 = make_case(37, 64, 101, torch.float32, seed=4)
    _, _, t2, g2 = make_case(37, 64, 101, torch.float32, seed=5)
    ids = torch.randint(0, 101, (37,), generator=torch.Generator().manual_seed(6)).to(DEV)
    grads = []
    for w, fn in ((weight, ll.linear_logprobs), (weight.double(), naive)):
        w = w.detach().clone().requires_grad_()
        loss(w, ids, t1, t2, g1.to(w.dtype), g2.to(w.dtype), fn).backward()
        grads.append(w.grad.double())
    assert rel_err(grads[0], grads[1]) < 1e-5


def test_frozen_weight_gets_no_gradient(kernel_mode):
    hidden, weight, targets, grad_out = make_case(37, 19, 101, torch.float32, seed=7)
    h = hidden.clone().requires_grad_()
    ll.linear_logprobs(h, weight, targets).backward(grad_out)
    exact = run(naive, hidden.double(), weight.double(), targets, grad_out.double())
    assert weight.grad is None and rel_err(h.grad.double(), exact[1]) < 1e-5


def test_no_grad_forward_matches(kernel_mode):
    hidden, weight, targets, _ = make_case(37, 19, 101, torch.float32, seed=8)
    with torch.no_grad():
        ref_logp = ll.linear_logprobs(hidden, weight, targets)
    assert ref_logp.grad_fn is None and ref_logp.dtype == torch.float32
    exact = naive(hidden.double(), weight.double(), targets)
    assert rel_err(ref_logp.double(), exact) < 1e-5


def test_non_contiguous_inputs_and_expanded_grad(kernel_mode):
    hidden, weight, targets, _ = make_case(37, 19, 101, torch.float32, seed=9)
    ones = torch.ones(37, device=DEV)
    base = run(ll.linear_logprobs, hidden, weight, targets, ones)
    h_strided = hidden.t().contiguous().t()  # column-major
    w_strided = torch.stack([weight, -weight], 2)[:, :, 0]  # row stride 2H, column stride 2
    t_strided = torch.stack([targets, targets], 1)[:, 0]
    assert not (h_strided.is_contiguous() or w_strided.is_contiguous() or t_strided.is_contiguous())
    h, w = h_strided.detach().requires_grad_(), w_strided.detach().requires_grad_()
    ll.linear_logprobs(h, w, t_strided).sum().backward()  # grad_out arrives as a stride-0 expanded view
    for got, want in zip((h.grad, w.grad), base[1:]):
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("hidden,weight,targets,match", [
    (torch.randn(2, 3, 8), torch.randn(11, 8), torch.zeros(2, dtype=torch.long), "flatten leading dims"),
    (torch.randn(4, 8), torch.randn(11, 9), torch.zeros(4, dtype=torch.long), r"hidden \[N, H\] and weight"),
    (torch.randn(4, 8), torch.randn(11, 8), torch.zeros(5, dtype=torch.long), r"targets must be \[N\]=4"),
    (torch.randn(4, 8), torch.randn(11, 8), torch.zeros(4), "targets must be int64"),
    (torch.randn(4, 8).double(), torch.randn(11, 8).double(), torch.zeros(4, dtype=torch.long), "float64"),
    (torch.randn(4, 8).bfloat16(), torch.randn(11, 8), torch.zeros(4, dtype=torch.long), "share one dtype"),
    (torch.randn(4, 8), torch.randn(0, 8), torch.zeros(4, dtype=torch.long), "empty vocabulary"),
    (torch.randn(4, 8), torch.randn(11, 8), torch.tensor([0, 11, 2, -100]), "target 11 outside"),
    (torch.randn(4, 8), torch.randn(11, 8), torch.tensor([0, -1, 2, 3]), "target -1 outside"),
])
def test_bad_inputs_rejected(kernel_mode, hidden, weight, targets, match):
    with pytest.raises(UserError, match=match):
        ll.linear_logprobs(hidden.to(DEV), weight.to(DEV), targets.to(DEV))


def test_empty_batch(kernel_mode):
    h = torch.zeros(0, 8, device=DEV, requires_grad=True)
    out = ll.linear_logprobs(h, torch.randn(11, 8, device=DEV), torch.zeros(0, dtype=torch.long, device=DEV))
    out.sum().backward()
    assert out.shape == (0,) and h.grad.shape == (0, 8)


@pytest.mark.parametrize("setting,expected", [
    ("", "ieee"),  # torch's default: full fp32
    ("torch.backends.cuda.matmul.fp32_precision = 'tf32'", "tf32"),  # the current API
    ("torch.backends.fp32_precision = 'tf32'", "tf32"),  # its parent switch
    ("torch.backends.cuda.matmul.fp32_precision = 'ieee'", "ieee"),
    ("torch.set_float32_matmul_precision('high')", "tf32"),  # the older APIs
    ("torch.backends.cuda.matmul.allow_tf32 = True", "tf32"),
])
def test_fp32_matmul_precision_follows_torch(setting, expected):
    # a fresh process per setting: once the new API is used, reading allow_tf32 raises in the whole process
    import subprocess
    import sys
    code = (f"import torch\n{setting}\nfrom metareward.kernels.linear_logprobs import _precision\n"
            "print(_precision(torch.float32), _precision(torch.bfloat16))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == [expected, "tf32"]
