"""Plain PyTorch forward hooks on each layer's own MLP activation module, always removed.

Where the modules are is data, not code: the decoder layers are the first of :data:`LAYER_PATHS`
the model has, and in each layer the activation module is the first of :data:`ACT_PATHS`
(Llama / Qwen / Mistral / Gemma ``mlp.act_fn``; Phi-3 ``mlp.activation_fn``, which transformers
applies to the gate half of the fused ``gate_up_proj`` only; GPT-2 ``mlp.act`` on ``c_fc(x)``).
Pattern ``gate`` reads the activation module's output; pattern ``gate_up`` reads the input of the
down projection (:data:`DOWN_PATHS`), which is exactly ``act(gate) * up``.

Example:
    >>> with mlp_activation_hooks(model, "gate", on_mask) as taps:
    ...     taps.expect(batch, seq)
    ...     model(input_ids)
    ...     taps.check()   # every layer's hook fired exactly once with a (batch, seq, d_ff) output
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from tunelens.activations.options import Pattern
from tunelens.errors import TunelensError

LAYER_PATHS = ("model.layers", "transformer.h", "model.language_model.layers", "model.decoder.layers")
ACT_PATHS = ("mlp.act_fn", "mlp.activation_fn", "mlp.act")
DOWN_PATHS = ("mlp.down_proj", "mlp.c_proj")
GATED = ("mlp.gate_proj", "mlp.gate_up_proj")  # an MLP with one of these has a gate and an up half

#: ``on_mask(layer, mask)`` receives the (batch, seq, d_ff) boolean pattern of one layer
MaskSink = Callable[[int, torch.Tensor], None]


@dataclass(frozen=True)
class MlpSite:
    """Where one layer's pattern is read: ``module`` and whether from its output or input."""

    layer: int
    name: str
    module: nn.Module
    reads: str  # "output" of the activation module, or "input" of the down projection


def _get(root: nn.Module, path: str) -> nn.Module | None:
    try:
        return root.get_submodule(path)
    except AttributeError:
        return None


def find_sites(model: nn.Module, pattern: Pattern) -> tuple[list[MlpSite], int]:
    """The hook site of every decoder layer and the MLP width d_ff, or a one-line error."""
    layers_path = next((p for p in LAYER_PATHS if isinstance(_get(model, p), nn.ModuleList)), None)
    if layers_path is None:
        raise TunelensError(
            f"{type(model).__name__}: no decoder layer list found (looked for {', '.join(LAYER_PATHS)})"
        )
    layers = model.get_submodule(layers_path)
    assert isinstance(layers, nn.ModuleList)
    sites: list[MlpSite] = []
    widths: set[int] = set()
    for i, layer in enumerate(layers):
        down_path = next((p for p in DOWN_PATHS if _get(layer, p) is not None), None)
        act_path = next((p for p in ACT_PATHS if _get(layer, p) is not None), None)
        if down_path is None or act_path is None:
            raise TunelensError(
                f"{type(model).__name__} layer {i}: no dense MLP activation module ({', '.join(ACT_PATHS)}); "
                "mixture-of-experts and other MLP layouts are not supported"
            )
        down = layer.get_submodule(down_path)
        widths.add(_in_width(down))
        if pattern == "gate":
            path, reads = act_path, "output"
        else:
            if not any(_get(layer, g) is not None for g in GATED):
                raise TunelensError(
                    f"{type(model).__name__} has no gate/up pair in its MLP; --pattern gate_up needs a gated MLP"
                )
            path, reads = down_path, "input"
        sites.append(MlpSite(i, f"{layers_path}.{i}.{path}", layer.get_submodule(path), reads))
    if len({id(s.module) for s in sites}) != len(sites):
        raise TunelensError(f"{type(model).__name__}: layers share one activation module; cannot tell layers apart")
    if len(widths) != 1:
        raise TunelensError(f"{type(model).__name__}: MLP width differs between layers ({sorted(widths)})")
    return sites, widths.pop()


def _in_width(down: nn.Module) -> int:
    """Input width of the down projection: nn.Linear ``in_features``, GPT-2 Conv1D ``weight [in, out]``."""
    if isinstance(down, nn.Linear):
        return down.in_features
    weight = getattr(down, "weight", None)
    if isinstance(weight, torch.Tensor) and weight.ndim == 2:
        return int(weight.shape[0])
    raise TunelensError(f"cannot read the MLP width from {type(down).__name__}")


class Taps:
    """Counts hook calls per forward and checks every layer fired once with the expected shape."""

    def __init__(self, sites: list[MlpSite], d_ff: int, sink: MaskSink) -> None:
        self.sites = sites
        self.d_ff = d_ff
        self.sink = sink
        self.fired = [0] * len(sites)
        self.nonfinite = [0] * len(sites)  # NaN / Inf activation values seen per layer, over every forward
        self._shape: tuple[int, int] | None = None

    @property
    def layers(self) -> int:
        return len(self.sites)

    def expect(self, batch: int, seq: int) -> None:
        """Call before each forward: the (batch, seq) every hook must see."""
        self._shape = (batch, seq)
        self.fired = [0] * len(self.sites)

    def check(self) -> None:
        """Call after each forward: raise if some layer's hook did not fire exactly once."""
        bad = [(s.name, n) for s, n in zip(self.sites, self.fired, strict=True) if n != 1]
        if bad:
            raise RuntimeError(f"activation hooks fired {bad[0][1]} times at {bad[0][0]} (expected once per forward)")

    def _receive(self, layer: int, values: torch.Tensor) -> None:
        expected = (*(self._shape or ()), self.d_ff)
        if self._shape is None or tuple(values.shape) != expected:
            raise RuntimeError(
                f"layer {layer}: activation of shape {tuple(values.shape)}, expected {expected} "
                "(call Taps.expect before the forward)"
            )
        self.fired[layer] += 1
        # NaN > 0 is False: a NaN would silently count as inactive. The float32 sum is NaN/Inf exactly when
        # some value is (or when finite values overflow it: the exact count below then finds none); it
        # costs ~1/20 of an elementwise isfinite pass (4 vs 77 ms on an 8x512x1536 float32 block, 1 thread)
        if not bool(torch.isfinite(values.sum(dtype=torch.float32))):
            self.nonfinite[layer] += int(values.numel() - int(torch.isfinite(values).sum()))
        self.sink(layer, values > 0)


@contextmanager
def mlp_activation_hooks(model: nn.Module, pattern: Pattern, sink: MaskSink) -> Iterator[Taps]:
    """Hook every layer's MLP activation; the hooks are removed on exit, whatever happens."""
    sites, d_ff = find_sites(model, pattern)
    taps = Taps(sites, d_ff, sink)
    handles: list[torch.utils.hooks.RemovableHandle] = []
    try:
        for site in sites:
            if site.reads == "output":
                handles.append(site.module.register_forward_hook(_output_hook(taps, site.layer)))
            else:
                handles.append(site.module.register_forward_pre_hook(_input_hook(taps, site.layer)))
        yield taps
    finally:
        for h in handles:
            h.remove()


def _output_hook(taps: Taps, layer: int) -> Callable[[nn.Module, Any, torch.Tensor], None]:
    def hook(module: nn.Module, args: Any, output: torch.Tensor) -> None:
        taps._receive(layer, output)

    return hook


def _input_hook(taps: Taps, layer: int) -> Callable[[nn.Module, tuple[Any, ...]], None]:
    def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
        taps._receive(layer, args[0])

    return hook
