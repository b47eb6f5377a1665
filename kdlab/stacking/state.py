"""The stacked tensors of the live members (models and losses along a leading member axis), each member's
book-keeping, and the control the callbacks get at an epoch boundary."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Hashable

import torch
from torch import Tensor, nn

from kdlab.errors import KdlabError
from kdlab.stacking.members import Member, Status
from kdlab.stacking.optim import Schedule

# -- the stacked state ----------------------------------------------------------------------------------------------


class _Stacked:
    """The members' tensors of one module kind (models or losses) along a leading member axis.

    ``params`` are leaves that require a gradient where the members' parameters do; ``buffers`` are plain tensors
    (BatchNorm's running statistics are updated in place, per member, under vmap). ``base`` is a live module of the
    same structure that :meth:`call` runs with one member's slices swapped in (under vmap: all members at once).
    """

    def __init__(self, modules: list[nn.Module]):
        self.params = _stack_named([dict(m.named_parameters()) for m in modules], leaves=True)
        self.buffers = _stack_named([dict(m.named_buffers()) for m in modules], leaves=False)
        self.set_base(modules[0])

    def set_base(self, module: nn.Module) -> None:
        self.base = module
        self._places = []  # (owning module, its _parameters or _buffers dict, attribute name), in tensors() order
        for kind, names in (("_parameters", self.params), ("_buffers", self.buffers)):
            for name in names:
                owner_name, _, attr = name.rpartition(".")
                owner = module.get_submodule(owner_name) if owner_name else module
                self._places.append((getattr(owner, kind), attr))

    def tensors(self) -> list[Tensor]:
        return [*self.params.values(), *self.buffers.values()]

    def call(self, tensors: list[Tensor], *args: Any) -> Any:
        """``base(*args)`` with ``tensors`` (one per parameter and buffer, in :meth:`tensors` order) in place of its
        own: what ``torch.func.functional_call`` does, without its pytree and accessor machinery (~40 µs a call,
        paid every step)."""
        places = self._places
        saved = [d[a] for d, a in places]
        for (d, a), t in zip(places, tensors):
            d[a] = t
        try:
            return self.base(*args)
        finally:
            for (d, a), t in zip(places, saved):
                d[a] = t

    def select(self, keep: list[int], new: list[nn.Module]) -> None:
        idx = torch.tensor(keep, dtype=torch.long)
        fresh_p = _stack_named([dict(m.named_parameters()) for m in new], leaves=False) if new else {}
        fresh_b = _stack_named([dict(m.named_buffers()) for m in new], leaves=False) if new else {}

        def rows(old: dict[str, Tensor], fresh: dict[str, Tensor]) -> dict[str, Tensor]:
            out = {}
            for name, t in old.items():
                kept = t.detach().index_select(0, idx.to(t.device))
                out[name] = torch.cat([kept, fresh[name].to(t.device)]) if name in fresh else kept
            return out

        self.params = {n: t.requires_grad_(self.params[n].requires_grad) for n, t in
                       rows(self.params, fresh_p).items()}
        self.buffers = rows(self.buffers, fresh_b)

    def trainable(self) -> list[Tensor]:
        return [p for p in self.params.values() if p.requires_grad]

    def member_state(self, k: int) -> dict[str, Tensor]:
        return {**{n: t[k] for n, t in self.params.items()}, **{n: t[k] for n, t in self.buffers.items()}}

    @torch.no_grad()
    def write_back(self, k: int, module: nn.Module) -> None:
        """Copy member ``k``'s rows into its own module."""
        for name, t in module.named_parameters():
            t.copy_(self.params[name][k])
        for name, t in module.named_buffers():
            t.copy_(self.buffers[name][k])


def _stack_named(dicts: list[dict[str, Tensor]], *, leaves: bool) -> dict[str, Tensor]:
    out = {}
    for name in dicts[0]:
        t = torch.stack([d[name].detach() for d in dicts])
        out[name] = t.requires_grad_(dicts[0][name].requires_grad) if leaves else t
    return out


@dataclass
class _Slot:
    """Book-keeping of one member while it is in the stack."""

    member: Member
    schedule: Schedule
    gen: torch.Generator
    epoch: int = 0  # epochs done
    history: list[dict[str, float]] = field(default_factory=list)
    best_acc: float = -1.0
    best_epoch: int = 0
    best_state: dict[str, Tensor] | None = None
    time_s: float = 0.0
    status: Status | None = None
    reason: str | None = None


class StackControl:
    """What the callbacks can do to the running stack, at an epoch boundary."""

    def __init__(self, capacity: int | None):
        self.capacity = capacity
        self._keys: list[Hashable] = []
        self._prune: dict[Hashable, str] = {}
        self._add: list[Member] = []

    @property
    def keys(self) -> list[Hashable]:
        """Keys of the members in the stack (in ``on_epoch``: also those whose last epoch this was; pruned ones and
        ones added at this boundary not counted)."""
        return [k for k in self._keys if k not in self._prune]

    @property
    def free(self) -> int | None:
        """Slots free for :meth:`add` (``None``: no capacity given). In ``on_epoch`` members whose last epoch this was
        still hold their slots; ``on_result`` sees them freed."""
        if self.capacity is None:
            return None
        return self.capacity - len(self.keys) - len(self._add)

    def prune(self, key: Hashable, reason: str = "pruned") -> None:
        """Remove member ``key`` after this epoch; it ends with status ``pruned`` (its compute is freed)."""
        if key not in self._keys:
            raise KeyError(f"no member {key!r} in the stack (members: {self._keys})")
        self._prune[key] = reason

    def add(self, member: Member) -> None:
        """Add ``member`` at this epoch boundary: it trains for its own ``epochs`` from its own epoch 1."""
        if self.free is not None and self.free <= 0:
            raise KdlabError(f"the stack is full ({self.capacity} members)")
        if member.key in self._keys or any(m.key == member.key for m in self._add):
            raise KdlabError(f"a member with key {member.key!r} is already in the stack")
        self._add.append(member)


