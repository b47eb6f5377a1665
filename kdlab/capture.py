"""Reading a model's intermediate outputs: the module at a dotted path, and forward hooks that capture the outputs
of named modules (feature-based losses name the layers they distil; the models' forward stays untouched)."""

from __future__ import annotations

from torch import Tensor, nn

from kdlab.errors import KdlabError
from kdlab.suggest import did_you_mean


def find_module(model: nn.Module, path: str, *, key: str, owner: str) -> nn.Module:
    """The submodule at dotted ``path``, or an error naming the config key and listing the module names."""
    modules = dict(model.named_modules())
    if path in modules and path != "":
        return modules[path]
    names = [n for n in modules if n]
    hint = did_you_mean(path, names)
    raise KdlabError(f"{key}: {owner} has no module {path!r}{hint} Its modules: {', '.join(names)}")


class FeatureCapture:
    """Forward hooks that record the outputs of named modules into ``self.features`` (models' forward untouched)."""

    def __init__(self, model: nn.Module, layers: tuple[str, ...] | list[str], *, key: str, owner: str):
        self.features: dict[str, Tensor] = {}
        self._handles = []
        for name in layers:
            module = find_module(model, name, key=key, owner=owner)
            self._handles.append(module.register_forward_hook(self._hook(name)))

    def _hook(self, name: str):
        def hook(_module, _inp, out):
            self.features[name] = out[0] if isinstance(out, tuple) else out

        return hook

    def take(self) -> dict[str, Tensor]:
        out, self.features = self.features, {}
        return out

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
