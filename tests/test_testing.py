"""`flowgraph.testing` helpers themselves."""

from __future__ import annotations

import numpy as np
import torch

from flowgraph.testing import per_sample_logabsdet


def test_per_sample_logabsdet_is_right_for_large_jacobians_where_batched_slogdet_fails():
    """A batch of 3 linear maps of 200 dims against numpy's (OpenBLAS) slogdet, one by one.

    With several threads, this torch build's batched `torch.linalg.slogdet` is off here (by
    ~0.1 nats on these matrices, tens of nats on others); the helper must not be.
    """
    g = torch.Generator().manual_seed(0)
    n = 200
    a = torch.randn(3, n, n, generator=g, dtype=torch.float64) / n**0.5
    a += 2 * torch.eye(n, dtype=torch.float64)
    x = torch.randn(3, n, generator=g, dtype=torch.float64)
    expected = torch.from_numpy(np.linalg.slogdet(a.numpy())[1])
    threads = torch.get_num_threads()
    torch.set_num_threads(4)  # the failure needs MKL to run threaded
    try:
        got = per_sample_logabsdet(lambda vs: torch.einsum("bij,bj->bi", a, vs[0]), [x])
        batched = torch.linalg.slogdet(a)[1]
    finally:
        torch.set_num_threads(threads)
    assert torch.allclose(got, expected, rtol=0, atol=1e-9), (got - expected).abs().max()
    print(f"batched slogdet max error: {(batched - expected).abs().max().item():.3g} nats")
