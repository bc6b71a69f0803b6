"""Tolerances relative to torch's own rounding error (the Cut Cross-Entropy protocol): a float32 result is
compared with a float64 truth, and may be off by no more than a small multiple of what a plain float32
computation of the same thing is off by. A fixed absolute bound tuned on one CPU fails on another (AVX2 vs
AVX-512 vs ARM sum in different orders); this one scales with the machine's own error."""
import torch


def max_err(x: torch.Tensor, truth: torch.Tensor) -> float:
    return (x.double() - truth.double()).abs().max().item()


def assert_within_torch_error(got: torch.Tensor, ref: torch.Tensor, truth: torch.Tensor, factor: float = 4.0):
    """got: the path under test; ref: torch's plain computation in the same dtype; truth: float64."""
    assert got.shape == ref.shape == truth.shape, (got.shape, ref.shape, truth.shape)
    # floor: a few ulps of the largest value, for when ref happens to round exactly
    floor = 8 * torch.finfo(ref.dtype).eps * truth.abs().max().item()
    err, ref_err = max_err(got, truth), max_err(ref, truth)
    assert err <= factor * max(ref_err, floor), f"error {err:.3g} vs torch's own {ref_err:.3g} (floor {floor:.3g})"
