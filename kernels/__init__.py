"""Triton kernels, one module per op; each module holds the kernel, its PyTorch reference,
the autograd.Function and a thin wrapper. Import them through `bsynth_hpc.ops`."""
