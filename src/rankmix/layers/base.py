"""The base layers rankmix adapts, and how each kind is read and merged into: one ordered list,
`BASE_LAYERS`, whose first kind that matches a module wraps it (quantized kinds first, since
bitsandbytes' layers subclass nn.Linear); any other module is refused, naming its class. bitsandbytes
is imported only to dequantize: the kinds recognise its classes by name."""

from __future__ import annotations

import torch
from torch import nn


def _is(module: nn.Module, package: str, name: str) -> bool:
    """Whether `module` is an instance of `package`'s class `name`, without importing the package."""
    return any(c.__name__ == name and c.__module__.startswith(package) for c in type(module).__mro__)


class BaseLayer:
    """A kind of base layer: a plain nn.Linear (weight stored d_out x d_in), merged into in place."""

    name = "torch.nn.Linear"
    fan_in_fan_out = False  # the weight is stored (d_in, d_out), as GPT-2's Conv1D does

    def matches(self, module: nn.Module) -> bool:
        return isinstance(module, nn.Linear)

    def shape(self, module: nn.Module) -> tuple[int, int]:
        """(d_in, d_out)."""
        return module.in_features, module.out_features

    def dense_weight(self, module: nn.Module) -> torch.Tensor:
        """The weight as a (d_out, d_in) float matrix (dequantized, for quantized kinds)."""
        return module.weight

    def merge(self, module: nn.Module, delta: torch.Tensor) -> nn.Module:
        """`module` with `delta` (in its weight's layout) added to its weight: the layer to put in its
        place (`module` itself, changed in place, for float kinds)."""
        module.weight += delta.to(module.weight.dtype)
        return module


class Conv1D(BaseLayer):
    """transformers' GPT-2 Conv1D: a linear layer whose weight is stored (d_in, d_out)."""

    name = "transformers Conv1D"
    fan_in_fan_out = True

    def matches(self, module):
        return _is(module, "transformers", "Conv1D")

    def shape(self, module):
        d_in, d_out = module.weight.shape
        return d_in, d_out

    def dense_weight(self, module):
        return module.weight.t()


class Quantized(BaseLayer):
    """A bitsandbytes layer. Its weight cannot take a float delta: merging dequantizes it into a float32
    nn.Linear of the same shape and adds the delta there (re-quantizing would round the delta away)."""

    @torch.no_grad()
    def dequantize(self, module: nn.Module) -> nn.Linear:
        """A float32 nn.Linear that computes what `module` computes, up to its quantization."""
        weight = self.dense_weight(module).float()
        d_in, d_out = self.shape(module)
        plain = nn.Linear(d_in, d_out, bias=module.bias is not None, device=weight.device)
        plain.weight.copy_(weight)
        if module.bias is not None:
            plain.bias.copy_(module.bias.float())
        return plain

    def merge(self, module, delta):
        return super().merge(self.dequantize(module), delta)


class Linear4bit(Quantized):
    name = "bitsandbytes Linear4bit"

    def matches(self, module):
        return _is(module, "bitsandbytes", "Linear4bit")

    def dense_weight(self, module):
        import bitsandbytes.functional as F

        data, state = module.weight.data, module.weight.quant_state
        if getattr(state, "packing_format_for_cpu", False):  # repacked by a CPU forward in eval mode
            data, state = F._convert_weight_packed_for_cpu_inverse(data, state)
        return F.dequantize_4bit(data, state)


class Linear8bitLt(Quantized):
    name = "bitsandbytes Linear8bitLt"

    def matches(self, module):
        return _is(module, "bitsandbytes", "Linear8bitLt")

    def dense_weight(self, module):
        import bitsandbytes as bnb

        scales = module.weight.SCB if module.weight.SCB is not None else module.state.SCB
        return bnb.functional.int8_vectorwise_dequant(module.weight.data, scales)


BASE_LAYERS: tuple[BaseLayer, ...] = (Linear4bit(), Linear8bitLt(), Conv1D(), BaseLayer())


def base_layer_kind(module: nn.Module) -> BaseLayer | None:
    """The kind that wraps `module`, or None if rankmix cannot adapt it."""
    return next((kind for kind in BASE_LAYERS if kind.matches(module)), None)


def supported() -> str:
    return ", ".join(kind.name for kind in reversed(BASE_LAYERS))
