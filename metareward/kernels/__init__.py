"""One module per op (sample, linear_logprobs, paged_attention): Triton kernel(s), launcher, autograd function,
and a pure-torch reference with the same signature. METAREWARD_KERNELS=auto|triton|torch picks the
implementation (dispatch.py). The ops are imported from their modules, which share their names."""
