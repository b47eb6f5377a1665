"""A stack of plain MLPs as batched matmuls, with its backward written out: the fast kernel of :mod:`kdlab.stacking`.

``torch.func.vmap`` over ``functional_call`` runs any model, but for an MLP it leaves time on the table: the first
layer's input is the same batch for every member, yet each member multiplies it alone; the bias is a separate pass
over the activations; narrow layers (the 10-class head) run as badly shaped batched matmuls; and autograd records,
copies and frees around every op. This kernel runs the same arithmetic as:

* forward: the first layer of all K members is one matmul ``x @ [W1_1; ...; W1_K]^T`` (the batch is shared), the
  others ``baddbmm`` (bias fused), the head transposed (``W @ h^T``: 10 output rows instead of 10 output columns,
  2x faster); activations in place;
* backward, by hand from the loss's gradient of the logits: the activations' own backward ops on tensors laid out
  as the activations are (a transposed layout there is 20x slower), parameter gradients written by ``bmm(out=)``
  into preallocated tensors that the optimizer reads.

A model qualifies when ``torch.fx`` traces it to: an optional ``flatten(1)`` of the input, then ``nn.Linear`` layers
with ``nn.ReLU`` / ``nn.Tanh`` / ``nn.GELU`` / ``nn.SiLU`` between them (no dropout, no normalisation), the last
layer a Linear. The first-party ``mlp`` student (dropout 0) and ``nn.Sequential`` MLPs do.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

_ACTIVATIONS = (nn.ReLU, nn.Tanh, nn.GELU, nn.SiLU)


@dataclass
class _Layer:
    weight: str  # name of the stacked (K, out, in) weight
    bias: str | None
    act: nn.Module | None  # activation after the layer (None for the head)


class StackedMLP:
    """Forward and backward of K MLPs of the same shape held in stacked tensors ``params`` (``(K, ...)``)."""

    def __init__(self, layers: list[_Layer], params: dict[str, Tensor], flatten: bool):
        self.layers, self.params, self.flatten = layers, params, flatten
        self._saved: list[Tensor] = []
        self.grads = {name: torch.zeros_like(t) for name, t in params.items() if t.requires_grad}

    @classmethod
    def match(cls, model: nn.Module, params: dict[str, Tensor], buffers: dict[str, Tensor],
              structure: tuple[list[_Layer], bool] | None = None) -> StackedMLP | None:
        """The kernel for ``model``'s structure (or the given :meth:`structure` of it), or ``None`` when it is not
        a plain MLP."""
        if buffers or any(not t.requires_grad for t in params.values()):
            return None  # frozen layers, running statistics: leave them to the general kernel
        structure = structure if structure is not None else cls.structure(model)
        return None if structure is None else cls(structure[0], params, structure[1])

    @staticmethod
    def structure(model: nn.Module) -> tuple[list[_Layer], bool] | None:
        """``(layers, flatten)`` of a plain MLP (traced with ``torch.fx``), or ``None``."""
        if isinstance(model, nn.Linear):  # fx would trace into it
            return [_Layer("weight", "bias" if model.bias is not None else None, None)], False
        try:
            graph = torch.fx.symbolic_trace(model).graph
        except Exception:  # noqa: BLE001 - anything fx cannot trace is simply not a plain MLP
            return None
        modules = dict(model.named_modules())
        nodes = [n for n in graph.nodes if n.op not in ("placeholder", "output")]
        flatten = False
        if nodes and _is_flatten(nodes[0]):
            flatten, nodes = True, nodes[1:]
        layers: list[_Layer] = []
        for node in nodes:
            mod = modules.get(node.target) if node.op == "call_module" else None
            if isinstance(mod, nn.Linear):
                layers.append(_Layer(f"{node.target}.weight", f"{node.target}.bias" if mod.bias is not None else None,
                                     None))
            elif isinstance(mod, _ACTIVATIONS) and layers and layers[-1].act is None:
                if isinstance(mod, nn.GELU) and mod.approximate != "none":
                    return None
                layers[-1].act = mod
            else:
                return None
        if not layers or layers[-1].act is not None or len(list(model.parameters())) != sum(
                1 + (ly.bias is not None) for ly in layers):
            return None
        return layers, flatten

    # forward: layer outputs kept for the backward

    def forward(self, x: Tensor, shared: bool, train: bool = True) -> Tensor:
        """Transposed logits ``(K, C, B)`` for the batch ``x``: ``(B, ...)`` seen by every member (``shared``) or
        ``(K, B, ...)``, one batch per member. With ``train``, the layer outputs are kept for :meth:`backward`."""
        p = self.params
        if self.flatten:
            x = x.flatten(1) if shared else x.flatten(2)
        K = next(iter(p.values())).shape[0]
        saved = [x]
        h = x
        with torch.no_grad():
            for i, layer in enumerate(self.layers):
                w, b = p[layer.weight], p[layer.bias] if layer.bias else None
                last = i == len(self.layers) - 1
                if last:  # (K, C, B) = W @ h^T: the narrow head as C output rows
                    hT = h.transpose(-2, -1) if h.dim() == 3 else h.t().expand(K, -1, -1)
                    out = torch.baddbmm(b.unsqueeze(2), w, hT) if b is not None else torch.bmm(w, hT)
                    break
                if i == 0 and shared:  # one matmul for every member: (B, K*H)
                    kh = w.shape[0] * w.shape[1]
                    w2 = w.reshape(kh, w.shape[2])
                    z = torch.addmm(b.reshape(kh), h, w2.t()) if b is not None else h @ w2.t()
                    z = z.view(h.shape[0], K, w.shape[1]).transpose(0, 1)  # (K, B, H), a view
                else:
                    wT = w.transpose(1, 2)
                    z = torch.baddbmm(b.unsqueeze(1), h, wT) if b is not None else torch.bmm(h, wT)
                h = _act_forward(layer.act, z)
                if train:
                    saved.append(h if not _needs_input(layer.act) else (z, h))
        if train:
            self._saved = saved
        return out

    @torch.no_grad()
    def backward(self, grad_logits: Tensor) -> None:
        """Write the parameter gradients into :attr:`grads` from the loss's gradient of the logits ``(K, B, C)``."""
        p, g, saved = self.params, self.grads, self._saved
        K = grad_logits.shape[0]
        dz = grad_logits  # (K, B, width): every gradient is kept in the layout of the activations
        for i in range(len(self.layers) - 1, -1, -1):
            layer = self.layers[i]
            a_prev = saved[i][1] if isinstance(saved[i], tuple) else saved[i]
            if a_prev.dim() == 2:  # the shared batch (a stride-0 expand: no copy)
                a_prev = a_prev.expand(K, -1, -1)
            torch.bmm(dz.transpose(1, 2), a_prev, out=g[layer.weight])
            if layer.bias is not None:
                torch.sum(dz, 1, out=g[layer.bias])
            if i == 0:
                break
            da = torch.bmm(dz, p[layer.weight])  # (K, B, width of layer i-1)
            z_prev, h_prev = saved[i] if isinstance(saved[i], tuple) else (None, saved[i])
            dz = _act_backward(self.layers[i - 1].act, da, z_prev, h_prev)
        self._saved = []


def _is_flatten(node) -> bool:
    return (node.op == "call_method" and node.target == "flatten" and node.args[1:] in ((1,), ()) and
            not node.kwargs) or (node.op == "call_function" and node.target is torch.flatten and node.args[1:] == (1,))


def _needs_input(act: nn.Module | None) -> bool:
    """GELU and SiLU differentiate from their input; ReLU and Tanh from their output."""
    return isinstance(act, (nn.GELU, nn.SiLU))


def _act_forward(act: nn.Module | None, z: Tensor) -> Tensor:
    if isinstance(act, nn.ReLU):
        return z.relu_()
    if isinstance(act, nn.Tanh):
        return z.tanh_()
    if isinstance(act, nn.GELU):
        return torch.nn.functional.gelu(z)
    if isinstance(act, nn.SiLU):
        return torch.nn.functional.silu(z)
    return z


def _act_backward(act: nn.Module | None, grad: Tensor, z: Tensor | None, h: Tensor) -> Tensor:
    if isinstance(act, nn.ReLU):
        return torch.ops.aten.threshold_backward(grad, h, 0)
    if isinstance(act, nn.Tanh):
        return torch.ops.aten.tanh_backward(grad, h)
    if isinstance(act, nn.GELU):
        return torch.ops.aten.gelu_backward(grad, z)
    if isinstance(act, nn.SiLU):
        return torch.ops.aten.silu_backward(grad, z)
    return grad
