"""Convolutions from 8-bit codes: the ``swalp::int8_conv`` ops (forward, input and weight gradients).

A 2-D convolution (groups 1, zero padding) is a matrix product over patches: im2col turns
the input (N, C, H, W) into rows of C*kh*kw values, one row per output position. When the
input is on an 8-bit power-of-two grid (one scale per sample for the forward, one per tensor
for the weight gradient) its codes are unfolded in int8 (a quarter of float32's bytes) and
multiplied with :func:`swalp.ops.intmm.codes_mm`, exactly; otherwise torch's float
convolution runs. Each op returns ``(result, took_int8)``, the second a 0-dim CPU bool, and
is opaque to ``torch.compile`` (its choice depends on the data).

* forward: rows = input patches (per-sample scale), columns = the weight's output channels
  (each its own scale): per-channel and per-tensor weights qualify.
* weight gradient: ``dY^T`` (one scale per output channel over every position) times the
  patches (one scale for the whole input): per-tensor errors and activations qualify.
* input gradient: torch's (``torch.nn.grad.conv2d_input``). In im2col form it would need
  per-tensor weights and a float64 col2im of patch sums; measured on the CPU (2-core Xeon,
  VGG-16) that glue cost ten times what the float gradient does, so it is not offered.

Not public: :mod:`swalp.nn` builds ``Int8Conv1d``/``Int8Conv2d`` on these.

Example:
    >>> import torch
    >>> x = torch.arange(16.0).view(1, 1, 4, 4)               # integers: on the grid 2^0
    >>> w = torch.tensor([[[[1.0, -1.0], [0.5, 0.25]]]])      # on the grid 2^-2
    >>> out, took = torch.ops.swalp.int8_conv(x, w, [1, 1], [0, 0], [1, 1])
    >>> bool(took), torch.equal(out, torch.nn.functional.conv2d(x, w))
    (True, True)
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .intmm import GridCodes, codes_mm, grid_codes

__all__ = ["codes_4d", "im2col"]


def im2col(codes: Tensor, kernel, stride, padding, dilation) -> tuple[Tensor, tuple[int, int]]:
    """(N, C, H, W) -> ((N * Ho * Wo, kh * kw * C) patches, (Ho, Wo)): one row per output
    position, columns in (kh, kw, C) order (that of ``weight.permute(0, 2, 3, 1)``), any dtype
    (int8 here, which F.unfold does not take). Built from kh * kw strided copies of channel
    runs: four times faster here than gathering single bytes in F.unfold's (C, kh, kw) order."""
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel, stride, padding, dilation
    n, c, h, w = codes.shape
    x = F.pad(codes, (pw, pw, ph, ph)).permute(0, 2, 3, 1)  # (N, H, W, C) view
    ho = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    wo = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    out = codes.new_empty(n, ho, wo, kh * kw, c)
    for i in range(kh):
        for j in range(kw):
            out[:, :, :, i * kw + j] = x[:, i * dh:i * dh + (ho - 1) * sh + 1:sh, j * dw:j * dw + (wo - 1) * sw + 1:sw]
    return out.view(n * ho * wo, kh * kw * c), (ho, wo)


def _weight_rows(weight: Tensor) -> Tensor:
    """(O, C, kh, kw) -> (O, kh * kw * C): the column order of :func:`im2col`."""
    return weight.permute(0, 2, 3, 1).reshape(weight.shape[0], -1)


def codes_4d(x: Tensor, per: str) -> GridCodes | None:
    """``x`` (N, ...) as int8 codes of its shape with one scale per sample (``per="sample"``,
    scale (N, 1)) or one in all (``per="tensor"``, scale (1, 1)); None off the grid."""
    g = grid_codes(x.reshape(x.shape[0] if per == "sample" else 1, -1), 1)
    return None if g is None else GridCodes(g.codes.view(x.shape), g.scale)


def _flag(took: bool) -> Tensor:
    return torch.tensor(took)


@torch.library.custom_op("swalp::int8_conv", mutates_args=())
def int8_conv(x: Tensor, weight: Tensor, stride: Sequence[int], padding: Sequence[int],
              dilation: Sequence[int]) -> tuple[Tensor, Tensor]:
    out_ch = weight.shape[0]
    gx = codes_4d(x, "tensor") or codes_4d(x, "sample")  # one scale for all rows is one multiply less
    gw = grid_codes(_weight_rows(weight), 1) if gx is not None else None
    if gw is None:
        return F.conv2d(x, weight, None, stride, padding, dilation), _flag(False)
    cols, (ho, wo) = im2col(gx.codes, weight.shape[2:], stride, padding, dilation)
    rows = GridCodes(cols, gx.scale if gx.scale.shape[0] == 1 else gx.scale.repeat_interleave(ho * wo, 0))
    y = codes_mm(rows, GridCodes(gw.codes.t(), gw.scale.t()))
    return y.view(x.shape[0], ho, wo, out_ch).permute(0, 3, 1, 2).contiguous(), _flag(True)


@int8_conv.register_fake
def _(x, weight, stride, padding, dilation):
    return F.conv2d(x, weight, None, stride, padding, dilation), torch.empty((), dtype=torch.bool)


@torch.library.custom_op("swalp::int8_conv_weight", mutates_args=())
def int8_conv_weight(grad: Tensor, x: Tensor, w_shape: Sequence[int], stride: Sequence[int],
                     padding: Sequence[int], dilation: Sequence[int]) -> tuple[Tensor, Tensor]:
    out_ch = w_shape[0]
    # dY^T: one row per output channel, its columns in the (n, ho, wo) order of im2col's rows.
    a = grid_codes(grad.transpose(0, 1).reshape(out_ch, -1), 1)
    cx = codes_4d(x, "tensor") if a is not None else None
    if cx is None:
        return torch.nn.grad.conv2d_weight(x, w_shape, grad, stride, padding, dilation), _flag(False)
    cols, _ = im2col(cx.codes, w_shape[2:], stride, padding, dilation)
    o, c, kh, kw = w_shape
    return codes_mm(a, GridCodes(cols, cx.scale)).view(o, kh, kw, c).permute(0, 3, 1, 2).contiguous(), _flag(True)


@int8_conv_weight.register_fake
def _(grad, x, w_shape, stride, padding, dilation):
    return grad.new_empty(w_shape), torch.empty((), dtype=torch.bool)
