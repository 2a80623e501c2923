"""Convolutions from 8-bit codes: the ``swalp::int8_conv`` ops (forward, input and weight gradients).

A 2-D convolution (groups 1, zero padding) is a matrix product over patches: im2col turns
the input (N, C, H, W) into rows of C*kh*kw values, one row per output position. When the
input is on an 8-bit power-of-two grid (one scale per sample for the forward, one per tensor
for the weight gradient) its codes are unfolded in int8 (a quarter of float32's bytes), a piece
of the batch at a time (at most :data:`PATCH_BYTES` of patches), and multiplied exactly
(:func:`swalp.ops.intmm.codes_mm`; the weight gradient's pieces summed as integers); otherwise
torch's float convolution runs. Each op returns ``(result, took_int8)``, the second a 0-dim CPU bool, and
is opaque to ``torch.compile`` (its choice depends on the data).

* forward: rows = input patches (per-sample scale), columns = the weight's output channels
  (each its own scale): per-channel and per-tensor weights qualify.
* weight gradient: ``dY^T`` (one scale per output channel over every position) times the
  patches (one scale for the whole input): per-tensor errors and activations qualify.
* input gradient (and bias gradient): torch's ``convolution_backward``. In im2col form it would need
  per-tensor weights and a float64 col2im of patch sums; measured on the CPU (2-core Xeon,
  VGG-16) that glue cost ten times what the float gradient does, so it is not offered.

A 1-D convolution runs as a 2-D one of height 1. Off the grid each op is torch's own
convolution (or its backward), so a layer that never qualifies computes as nn.Conv does, bit
for bit. Not public: :mod:`swalp.nn` builds ``Int8Conv1d``/``Int8Conv2d`` on these.

Example:
    >>> import torch
    >>> x = torch.arange(16.0).view(1, 1, 4, 4)               # integers: on the grid 2^0
    >>> w = torch.tensor([[[[1.0, -1.0], [0.5, 0.25]]]])      # on the grid 2^-2
    >>> out, took = torch.ops.swalp.int8_conv(x, w, None, [1, 1], [0, 0], [1, 1])
    >>> bool(took), torch.equal(out, torch.nn.functional.conv2d(x, w))
    (True, True)
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from . import cpu
from .intmm import MAX_K, GridCodes, codes_mm, exact_int_mm, grid_codes, scale_sums

__all__ = ["channel_codes", "codes_4d", "im2col"]


def _out_size(size, kernel, stride, padding, dilation) -> tuple[int, int]:
    """(Ho, Wo) of a 2-D convolution of an input of spatial ``size`` (H, W)."""
    return tuple((n + 2 * p - d * (k - 1) - 1) // s + 1 for n, k, s, p, d in zip(size, kernel, stride, padding, dilation))


def im2col(codes: Tensor, kernel, stride, padding, dilation, kernels: bool = True) -> tuple[Tensor, tuple[int, int]]:
    """(N, C, H, W) -> ((N * Ho * Wo, kh * kw * C) patches, (Ho, Wo)): one row per output
    position, columns in (kh, kw, C) order (that of ``weight.permute(0, 2, 3, 1)``), any dtype
    (int8 here, which F.unfold does not take). Built from kh * kw strided copies of channel
    runs: four times faster here than gathering single bytes in F.unfold's (C, kh, kw) order.
    Int8 on the CPU: one C++ call (``swalp/ops/cpu/csrc/int8.cpp``) that copies each row's
    contiguous channel runs, the same bytes (``kernels=False`` asks for the copies here)."""
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel, stride, padding, dilation
    n, c = codes.shape[:2]
    ho, wo = _out_size(codes.shape[2:], kernel, stride, padding, dilation)
    if kernels and codes.dtype == torch.int8 and codes.is_cpu and cpu.load():
        return torch.ops.swalp_cpu.im2col(codes, list(kernel), list(stride), list(padding), list(dilation)), (ho, wo)
    x = F.pad(codes, (pw, pw, ph, ph)).permute(0, 2, 3, 1)  # (N, H, W, C) view
    out = codes.new_empty(n, ho, wo, kh * kw, c)
    for i in range(kh):
        for j in range(kw):
            out[:, :, :, i * kw + j] = x[:, i * dh:i * dh + (ho - 1) * sh + 1:sh, j * dw:j * dw + (wo - 1) * sw + 1:sw]
    return out.view(n * ho * wo, kh * kw * c), (ho, wo)


# The int8 patches of a product are built a piece of the batch at a time, at most this many
# bytes (at least one image): VGG-16's second convolution at batch 128 has 75 MB of them. On
# the CPU a piece that stays small stays in cache (measured: faster and 47 MB less at the peak);
# a GPU has the memory and pays per launch and per host synchronisation, so it takes more.
PATCH_BYTES = 16 << 20
PATCH_BYTES_GPU = 512 << 20


def _pieces(x4: Tensor, w4: Tensor, positions: int) -> list[tuple[int, int]]:
    """Ranges of images whose patches (``positions`` rows of C*kh*kw bytes each) take at most
    :data:`PATCH_BYTES` (:data:`PATCH_BYTES_GPU` off the CPU)."""
    per_image = positions * w4.shape[1] * w4.shape[2] * w4.shape[3]
    step = max(1, (PATCH_BYTES if x4.is_cpu else PATCH_BYTES_GPU) // max(per_image, 1))
    return [(i, min(x4.shape[0], i + step)) for i in range(0, x4.shape[0], step)]


def _weight_rows(weight: Tensor) -> Tensor:
    """(O, C, kh, kw) -> (O, kh * kw * C): the column order of :func:`im2col`."""
    return weight.permute(0, 2, 3, 1).reshape(weight.shape[0], -1)


def codes_4d(x: Tensor, per: str) -> GridCodes | None:
    """``x`` (N, ...) as int8 codes of its shape with one scale per sample (``per="sample"``,
    scale (N, 1)) or one in all (``per="tensor"``, scale (1, 1)); None off the grid."""
    g = grid_codes(x.reshape(x.shape[0] if per == "sample" else 1, -1), 1)
    return None if g is None else GridCodes(g.codes.view(x.shape), g.scale)


def channel_codes(x: Tensor, kernels: bool = True) -> GridCodes | None:
    """``x`` (N, C, ...) as the rows of ``x^T`` (C, N * ...): int8 codes with one scale per
    channel, or None off the grid (a convolution's output gradient as its weight gradient's
    left factor). On the CPU one C++ call reads ``x`` in place, without the transposed copy."""
    if kernels and x.dtype == torch.float32 and x.is_cpu and cpu.load():
        codes, scale = torch.ops.swalp_cpu.channel_codes(x)
        return GridCodes(codes, scale) if codes.numel() == x.numel() else None
    return grid_codes(x.transpose(0, 1).reshape(x.shape[1], -1), 1, kernels=kernels)


def _flag(took: bool) -> Tensor:
    return torch.tensor(took)


def _as_2d(x: Tensor, weight: Tensor, stride, padding, dilation) -> tuple:
    """A 1-D convolution as a 2-D one of height 1: 4-D ``x`` and ``weight``, pairs of geometry."""
    if x.dim() == 4:
        return x, weight, tuple(stride), tuple(padding), tuple(dilation)
    return x.unsqueeze(2), weight.unsqueeze(2), (1, stride[0]), (0, padding[0]), (1, dilation[0])


@torch.library.custom_op("swalp::int8_conv", mutates_args=())
def int8_conv(x: Tensor, weight: Tensor, bias: Tensor | None, stride: Sequence[int], padding: Sequence[int],
              dilation: Sequence[int]) -> tuple[Tensor, Tensor]:
    """``(conv(x, weight) + bias, took_int8)`` for a 1-D or 2-D convolution (groups 1, zero
    padding); off the grid, torch's own convolution, so a fallback is nn.Conv's bit for bit."""
    x4, w4, stride4, padding4, dilation4 = _as_2d(x, weight, stride, padding, dilation)
    out_ch = weight.shape[0]
    gx = codes_4d(x4, "tensor") or codes_4d(x4, "sample")  # one scale for all rows is one multiply less
    gw = grid_codes(_weight_rows(w4), 1) if gx is not None else None
    if gw is None:
        return torch.ops.aten.convolution(x, weight, bias, stride, padding, dilation, False,
                                          [0] * len(stride), 1), _flag(False)
    right = GridCodes(gw.codes.t(), gw.scale.t())
    n, ho, wo = x4.shape[0], *_out_size(x4.shape[2:], w4.shape[2:], stride4, padding4, dilation4)
    out = x4.new_empty(n, out_ch, ho, wo)
    for i, j in _pieces(x4, w4, ho * wo):  # rows are independent: a piece of the batch at a time
        cols, _ = im2col(gx.codes[i:j], w4.shape[2:], stride4, padding4, dilation4)
        scale = gx.scale if gx.scale.shape[0] == 1 else gx.scale[i:j].repeat_interleave(ho * wo, 0)
        y = codes_mm(GridCodes(cols, scale), right)
        if bias is not None:
            y.add_(bias)
        out[i:j] = y.view(j - i, ho, wo, out_ch).permute(0, 3, 1, 2)
    return (out if x.dim() == 4 else out.squeeze(2)), _flag(True)


@int8_conv.register_fake
def _(x, weight, bias, stride, padding, dilation):
    out = torch.ops.aten.convolution(x, weight, bias, stride, padding, dilation, False, [0] * len(stride), 1)
    return out, torch.empty((), dtype=torch.bool)


@torch.library.custom_op("swalp::int8_conv_backward", mutates_args=())
def int8_conv_backward(grad: Tensor, x: Tensor, weight: Tensor, stride: Sequence[int], padding: Sequence[int],
                       dilation: Sequence[int], mask: Sequence[bool]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(grad_input, grad_weight, grad_bias, took_int8)`` for the outputs ``mask`` asks for (the
    others empty): the weight gradient from codes where exact, the rest (and everything, off
    the grid) from torch's ``convolution_backward`` in one call, as nn.Conv's backward makes it."""
    n = len(stride)
    a = cx = None
    if mask[1]:
        x4, w4, stride4, padding4, dilation4 = _as_2d(x, weight, stride, padding, dilation)
        # dY^T: one row per output channel, its columns in the (n, ho, wo) order of im2col's rows.
        a = channel_codes(grad)
        cx = codes_4d(x4, "tensor") if a is not None else None
    took = cx is not None
    # Off the grid: one call with torch's mask, as nn.Conv's backward. With the int8 weight
    # gradient, the bias gradient is a plain sum: asking mkldnn for it computes the weight
    # gradient too (measured: twice the time of the input gradient alone).
    gx, gw, gb = torch.ops.aten.convolution_backward(
        grad, x, weight, [weight.shape[0]], stride, padding, dilation, False, [0] * n, 1,
        [mask[0], mask[1] and not took, mask[2] and not took])
    if took:
        if mask[2]:
            gb = grad.sum([0, *range(2, grad.dim())])
        o, c, kh, kw = w4.shape
        hw = a.codes.shape[1] // max(x4.shape[0], 1)  # output positions per image
        wide = a.codes.shape[1] > MAX_K  # the whole reduction could overflow int32: pieces in int64
        acc = torch.zeros(o, kh * kw * c, dtype=torch.int32, device=grad.device) if x4.shape[0] == 0 else None
        for i, j in _pieces(x4, w4, hw):  # a piece of the batch's patches at a time, summed exactly
            cols, _ = im2col(cx.codes[i:j], w4.shape[2:], stride4, padding4, dilation4)
            part = exact_int_mm(a.codes[:, i * hw:j * hw], cols)
            part = part.to(torch.int64) if wide else part
            acc = part if acc is None else acc.add_(part)
        gw = scale_sums(acc, a.scale, cx.scale).view(o, kh, kw, c).permute(0, 3, 1, 2).reshape(weight.shape)

    def empty():  # one of its own for each output not asked for: a custom op's outputs may not alias
        return grad.new_empty(0)

    return (gx if mask[0] else empty()), (gw.contiguous() if mask[1] else empty()), (gb if mask[2] else empty()), _flag(took)


@int8_conv_backward.register_fake
def _(grad, x, weight, stride, padding, dilation, mask):
    def like(t, wanted):
        return t.new_empty(t.shape) if wanted else grad.new_empty(0)

    return (like(x, mask[0]), like(weight, mask[1]), grad.new_empty(weight.shape[0]) if mask[2] else grad.new_empty(0),
            torch.empty((), dtype=torch.bool))
