from __future__ import annotations

import torch

import kdlab


def carve(x: torch.Tensor, y: torch.Tensor, n_out: int, seed: int) -> tuple[kdlab.Split, kdlab.Split]:
    """Split off ``n_out`` rows, stratified by class, with a seeded permutation: returns (rest, carved)."""
    rest, carved = carve_indices(y, n_out, seed)
    return kdlab.Split(x[rest], y[rest]), kdlab.Split(x[carved], y[carved])


def carve_indices(y: torch.Tensor, n_out: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The row indices of :func:`carve`'s (rest, carved): for streamed data, whose rows are read later."""
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(y), generator=g)
    y_perm = y[perm]
    classes = torch.unique(y)
    take = []
    for i, c in enumerate(classes.tolist()):
        idx = perm[y_perm == c]
        share = round(n_out * len(idx) / len(y)) if i < len(classes) - 1 else n_out - sum(len(t) for t in take)
        take.append(idx[: max(0, min(share, len(idx)))])
    carved = torch.cat(take)
    mask = torch.ones(len(y), dtype=torch.bool)
    mask[carved] = False
    rest = perm[mask[perm]]
    carved = carved[torch.randperm(len(carved), generator=g)]
    return rest, carved


def halves(num_classes: int) -> list[list[int]]:
    h = num_classes // 2
    return [list(range(h)), list(range(h, num_classes))]
