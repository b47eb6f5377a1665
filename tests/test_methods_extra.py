"""kdlab_losses beyond its first methods: RKD's fast angle term against the implementation it replaced."""

from __future__ import annotations

import pytest
import torch


# -- RKD: the fast angle term has the values of the implementation it replaced --------------------------------------


def _old_triplet_angles(e):
    """kdlab_losses.relations.triplet_angles before the fast angle term (Gram-matrix form under autograd)."""
    g = e @ e.T
    diag = g.diagonal()
    dot = g.unsqueeze(0) - g.unsqueeze(2) - g.unsqueeze(1) + diag.view(-1, 1, 1)
    sq = (diag.view(-1, 1) - 2 * g + diag.view(1, -1)).clamp_min(1e-12)
    norm = sq.sqrt() * (~torch.eye(len(e), dtype=torch.bool))
    inv = torch.where(norm > 0, 1 / norm.clamp_min(1e-12), torch.zeros_like(norm))
    return (dot * inv.unsqueeze(2) * inv.unsqueeze(1)).flatten()


@pytest.mark.parametrize("rows,dim_s,dim_t", [(1, 3, 3), (2, 3, 5), (7, 4, 9), (40, 16, 24)])
def test_rkd_angle_term_equals_the_old_implementation(rows, dim_s, dim_t):
    from kdlab_losses.relations import angle_loss, triplet_angles

    g = torch.Generator().manual_seed(rows)
    s = torch.randn(rows, dim_s, generator=g, dtype=torch.float64, requires_grad=True)
    t = 3 * torch.randn(rows, dim_t, generator=g, dtype=torch.float64)
    assert torch.allclose(triplet_angles(t), _old_triplet_angles(t), atol=1e-12)
    old = torch.nn.functional.smooth_l1_loss(_old_triplet_angles(s), _old_triplet_angles(t))
    (old_grad,) = torch.autograd.grad(old, s)
    new = angle_loss(s, t)
    (new_grad,) = torch.autograd.grad(new, s)
    assert float(new) == pytest.approx(float(old), rel=1e-12, abs=1e-15)
    assert torch.allclose(new_grad, old_grad, rtol=1e-9, atol=1e-15)


def test_rkd_angle_term_in_float32_and_with_repeated_rows():
    from kdlab_losses.relations import angle_loss

    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(32, 8, generator=g), torch.randn(32, 12, generator=g)
    old = torch.nn.functional.smooth_l1_loss(_old_triplet_angles(s), _old_triplet_angles(t))
    assert float(angle_loss(s, t)) == pytest.approx(float(old), rel=1e-5)
    # equal rows (dead ReLU units give them): angles of 0, as the paper's code gets by normalising differences
    s[3], t[7] = s[5], t[1]

    def paper(e):
        d = torch.nn.functional.normalize(e.unsqueeze(0) - e.unsqueeze(1), dim=2)
        return torch.bmm(d, d.transpose(1, 2)).flatten()

    s64, t64 = s.double(), t.double()
    want = torch.nn.functional.smooth_l1_loss(paper(s64), paper(t64))
    assert float(angle_loss(s64, t64)) == pytest.approx(float(want), rel=1e-9)
    assert float(angle_loss(s, t)) == pytest.approx(float(want), rel=1e-5)
