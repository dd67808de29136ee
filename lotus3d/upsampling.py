"""Nearest 2x upsampling followed by a 3x3 convolution, computed as one transposed convolution.

The diffusers ``Upsample2D`` layers of the UNet and the VAE decoder repeat every pixel 2 x 2 and then
convolve the enlarged map with a 3 x 3 kernel: 9 multiply-adds per output pixel and channel pair,
on only 4 distinct input pixels. Each output pixel (2i + a, 2j + b) sees the 2 x 2 input pixels
around (i, j), with the kernel's rows (and columns) summed where they fall on the same input
pixel: along one axis, phase a = 0 takes rows i - 1, i with weights (k0, k1 + k2), phase a = 1
takes rows i, i + 1 with (k0 + k1, k2). That is exactly a transposed convolution with stride 2,
padding 1 and a 4-tap kernel per axis, (k2, k1 + k2, k0 + k1, k0): 4 multiply-adds per output pixel
instead of 9, and no enlarged copy of the input. Same function, other summation order: outputs
differ by float rounding only (about 1e-6 relative; tested). The layers' time is about halved, on
OpenVINO and in torch alike (figures in docs/benchmarks.md, "Lotus inference").
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def fold_kernel(weight: torch.Tensor) -> torch.Tensor:
    """3 x 3 conv weight (O, I, 3, 3) -> the equivalent stride-2 transposed-conv weight (I, O, 4, 4)."""

    def along(w: torch.Tensor, axis: int) -> torch.Tensor:
        k0, k1, k2 = w.unbind(axis)
        return torch.stack([k2, k1 + k2, k0 + k1, k0], axis)

    return along(along(weight, 2), 3).transpose(0, 1).contiguous()


def unfold_kernel(folded: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`fold_kernel` (up to rounding): (I, O, 4, 4) -> (O, I, 3, 3)."""

    def along(w: torch.Tensor, axis: int) -> torch.Tensor:
        t0, t1, _, t3 = w.unbind(axis)
        return torch.stack([t3, t1 - t0, t0], axis)

    return along(along(folded.transpose(0, 1), 2), 3).contiguous()


class NearestConvUpsample(torch.nn.Module):
    """Drop-in for a diffusers ``Upsample2D`` (nearest 2x, then a 3 x 3 conv, no norm):
    (B, C, H, W) -> (B, O, 2H, 2W) by one transposed convolution. Any other ``output_size`` (the UNet
    asks for one when a latent side is not a multiple of its total downsampling) runs the original
    interpolation and convolution with the kernel recovered from the folded one."""

    def __init__(self, conv: torch.nn.Conv2d):
        super().__init__()
        self.channels, self.out_channels = conv.in_channels, conv.out_channels
        w = conv.weight.detach()
        self.weight = torch.nn.Parameter(fold_kernel(w.float()).to(w.dtype), requires_grad=False)
        self.bias = None if conv.bias is None else torch.nn.Parameter(conv.bias.detach().clone(), requires_grad=False)

    def forward(self, hidden_states: torch.Tensor, output_size: tuple[int, int] | None = None, *args, **kwargs):
        h, w = hidden_states.shape[-2:]
        if output_size is None or tuple(output_size) == (2 * h, 2 * w):
            return F.conv_transpose2d(hidden_states, self.weight, self.bias, stride=2, padding=1)
        x = F.interpolate(hidden_states, size=output_size, mode="nearest")
        return F.conv2d(x, unfold_kernel(self.weight), self.bias, padding=1)


def _conv_of(upsampler: torch.nn.Module) -> torch.nn.Module | None:
    """The convolution of a diffusers ``Upsample2D`` (named ``conv``, or ``Conv2d_0`` in old checkpoints)."""
    return upsampler.conv if upsampler.name == "conv" else getattr(upsampler, "Conv2d_0", None)


def foldable(module: torch.nn.Module) -> bool:
    """A diffusers ``Upsample2D`` whose forward is exactly nearest 2x + a 3 x 3, stride-1, padding-1 conv."""
    from diffusers.models.upsampling import Upsample2D

    if type(module) is not Upsample2D or module.norm is not None or module.use_conv_transpose:
        return False
    if not (module.use_conv and module.interpolate):
        return False
    conv = _conv_of(module)
    return (
        isinstance(conv, torch.nn.Conv2d)
        and conv.kernel_size == (3, 3)
        and conv.stride == (1, 1)
        and conv.padding == (1, 1)
        and conv.dilation == (1, 1)
        and conv.groups == 1
        and conv.padding_mode == "zeros"
    )


def fold_upsamplers(model: torch.nn.Module) -> int:
    """Replace, in place, every foldable ``Upsample2D`` of ``model`` (a UNet, a VAE) by a
    :class:`NearestConvUpsample`; returns how many. Idempotent."""
    targets = [(name, m) for name, m in model.named_modules() if foldable(m)]
    for name, m in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        conv = _conv_of(m)
        setattr(parent, child, NearestConvUpsample(conv).to(conv.weight.device))
    return len(targets)
