"""Triton is optional for real: in a Python where `import triton` fails, the kernel modules, the
`bsynth_hpc.ops` facade and the `bsynth_hpc.nn` modules import, every op falls back to its PyTorch
reference (even under TRITON_INTERPRET=1, which would otherwise pick the Triton path on CPU), and the
`*_triton` entry points refuse with a clear error. The missing package is simulated in a subprocess
by a meta-path finder that refuses `triton` and its submodules."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent('''
    import sys

    class _NoTriton:
        """Meta-path finder that makes `import triton` (and triton.*) fail as if it were not installed."""

        def find_spec(self, name, path=None, target=None):
            if name == "triton" or name.startswith("triton."):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, _NoTriton())

    import torch

    import bsynth_hpc.nn as bnn
    from bsynth_hpc import ops
    from bsynth_hpc.kernels import group_norm_silu as gns, haar_dwt3d as haar, window_attention3d as wa

    assert "triton" not in sys.modules, "triton imported despite the blocker"
    assert not ops.triton_available() and not gns.HAS_TRITON and not haar.HAS_TRITON and wa.triton is None

    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 2, 3, 4, 5, generator=g)
    y = ops.haar_dwt3d(x)
    assert torch.equal(y, haar.haar_dwt3d_reference(x))
    assert torch.equal(ops.haar_idwt3d(y, x.shape[2:]), haar.haar_idwt3d_reference(y, x.shape[2:]))
    level1, level2 = ops.haar_dwt3d_two_level(x, [0, 7])
    assert torch.equal(level2, haar.haar_dwt3d_reference(torch.cat([level1[:, :2], level1[:, 14:]], 1)))
    assert torch.equal(bnn.HaarIDWT3d()(bnn.HaarDWT3d()(x), x.shape[2:]), ops.haar_idwt3d(y, x.shape[2:]))

    h = torch.randn(2, 4, 3, 4, 5, generator=g)
    w, b = torch.randn(4, generator=g), torch.randn(4, generator=g)
    assert torch.equal(ops.group_norm_silu(h, 2, w, b), gns.group_norm_silu_reference(h, 2, w, b))
    norm = bnn.GroupNormSiLU(2, 4)
    assert torch.equal(norm(h), gns.group_norm_silu_reference(h, 2, norm.weight, norm.bias))

    q, k, v = (torch.randn(1, 2, 3, 4, 4, 8, generator=g) for _ in range(3))
    out = ops.window_attention3d(q, k, v, (2, 2, 2), (1, 1, 1))
    assert torch.equal(out, wa.window_attention3d_reference(q, k, v, (2, 2, 2), (1, 1, 1)))
    attn = bnn.WindowAttention3d(dim=16, num_heads=2, window_size=(2, 2, 2))
    assert attn(torch.randn(1, 3, 4, 4, 16, generator=g)).shape == (1, 3, 4, 4, 16)

    for call in (lambda: haar.haar_dwt3d_triton(x), lambda: haar.haar_idwt3d_triton(y),
                 lambda: gns.group_norm_silu_triton(h, 2), lambda: wa.window_attention3d_triton(q, k, v, (2, 2, 2))):
        try:
            call()
        except RuntimeError as exc:
            assert "triton" in str(exc), exc
        else:
            raise AssertionError("a *_triton entry point ran without triton")
    print("ok")
''')


def test_every_op_falls_back_to_the_reference_without_triton():
    env = dict(os.environ, TRITON_INTERPRET="1", OMP_NUM_THREADS="1")
    env.pop("BSYNTH_DISABLE_TRITON", None)
    proc = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.strip().endswith("ok")
