"""Triton kernels, one module per op: the kernel, its PyTorch reference and the autograd.Function,
as plain functions (no nn.Modules: those are in `bsynth_hpc.nn`). Triton is optional: every module
imports without it and the references run anywhere. Call them through `bsynth_hpc.ops`; kernels
never import `bsynth_hpc.ops` or `bsynth_hpc.nn`."""
