"""The feedforward forward modes of a :class:`~cordsnet.model.CordsNet` (docs/specification.md §4.1-§4.2).

The compatibility CNN and the folded CNN are not new model classes: they are forward passes over the
model's own convolution modules. What they need besides the model lives in small trainer-side
containers that are not part of the published checkpoint layout:

* :class:`BatchNormSet`: the BatchNorm layers of the compatibility CNN (after ``inp_conv``, after
  every ``area_area_i`` and ``area_conv_i``, after every ``skip_area_j``);
* :class:`FoldedCNN`: what folding leaves outside the model: the spatial ``area_bias_i`` maps and a
  frozen copy of the CNN's recurrent convolutions (``area_conv_i`` and ``conv_bias_i``), which the
  inverse initialisation fits the RNN's recurrent weights to.

:func:`fold_batchnorm` folds a :class:`BatchNormSet` into the model (exact in eval mode) and returns
the :class:`FoldedCNN`.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..model import CordsNet, Weights
from .. import functional as CF

__all__ = [
    "BN_EPS",
    "BatchNormSet",
    "CNNActivity",
    "FoldedCNN",
    "compat_forward",
    "fold_batchnorm",
    "folded_activity",
    "folded_forward",
]

BN_EPS = 1e-5


class BatchNormSet(nn.Module):
    """The BatchNorm layers of the compatibility CNN of a model (docs/specification.md §4.1).

    Attributes:
        inp: after ``inp_conv`` (64 channels), before the avgpool.
        ff: one per area, after ``area_area_i``.
        rec: one per area, after ``area_conv_i``.
        skip: one per projection, after ``skip_area_j``.
    """

    def __init__(self, model: CordsNet) -> None:
        super().__init__()
        cfg = model.config
        self.inp = nn.BatchNorm2d(model.inp_conv.out_channels, eps=BN_EPS)
        self.ff = nn.ModuleList(nn.BatchNorm2d(c, eps=BN_EPS) for c in cfg.channels)
        self.rec = nn.ModuleList(nn.BatchNorm2d(c, eps=BN_EPS) for c in cfg.channels)
        self.skip = nn.ModuleList(nn.BatchNorm2d(m.out_channels, eps=BN_EPS) for m in model.skip_area)


class FoldedCNN(nn.Module):
    """What BatchNorm folding leaves outside the model (buffers, never trained).

    Attributes (buffers, one per area i):
        area_bias_i: (c_i, H_i, W_i), added after ``area_area_i``.
        rec_weight_i: (c_i, c_i, 3, 3), the CNN's effective ``area_conv_i`` weight.
        rec_bias_i: (c_i, H_i, W_i), the CNN's ``conv_bias_i``.
    """

    def __init__(self, model: CordsNet) -> None:
        super().__init__()
        self.depth = model.depth
        for i, (c, h, w) in enumerate(model.config.state_shapes):
            self.register_buffer(f"area_bias_{i}", torch.zeros(c, h, w))
            self.register_buffer(f"rec_weight_{i}", torch.zeros(c, c, 3, 3))
            self.register_buffer(f"rec_bias_{i}", torch.zeros(c, h, w))

    def area_bias(self, i: int) -> Tensor:
        return getattr(self, f"area_bias_{i}")

    def rec_weight(self, i: int) -> Tensor:
        return getattr(self, f"rec_weight_{i}")

    def rec_bias(self, i: int) -> Tensor:
        return getattr(self, f"rec_bias_{i}")


class CNNActivity(NamedTuple):
    """Activities of a feedforward pass, for the inverse initialisation.

    Attributes:
        u: the drive (B, 64, S/4, S/4) as the RNN sees it (``avgpool(inp_conv(x))``).
        ff: per area, ``area_area_i(h_i)`` with h_i formed from the CNN's activities (B, c_i, H_i, W_i).
        pre: per area, the CNN's pre-activation (B, c_i, H_i, W_i); ``x_i = relu(pre_i)``.
        logits: (B, classes).
    """

    u: Tensor
    ff: tuple[Tensor, ...]
    pre: tuple[Tensor, ...]
    logits: Tensor


# --------------------------------------------------------------------------------- compat CNN
def _feedforward_input(model: CordsNet, W: Weights, i: int, xs: list[Tensor], inp: Tensor,
                       skip_norm: nn.ModuleList | None = None) -> Tensor:
    """The CNN's feedforward input h_i, wired like the model's areas (``model.wiring``).

    Args:
        xs: the (already rectified) activities of areas 0..i-1.
        inp: the input drive, (B, 64, S/4, S/4).
        skip_norm: BatchNorms applied after each ``skip_area`` projection (compat CNN), or None.
    """
    wire = model.wiring[i]
    if wire.first < 0:
        return inp
    if wire.second == "inp_skip":
        return xs[wire.first] + F.conv2d(inp, W.inp_skip, padding=1)
    if wire.second == "identity":
        return xs[wire.first] + xs[wire.source]
    skip = F.conv2d(xs[wire.source], W.skip_area[wire.projection], stride=2)
    return xs[wire.first] + (skip_norm[wire.projection](skip) if skip_norm is not None else skip)


def compat_forward(model: CordsNet, bn: BatchNormSet, images: Tensor) -> Tensor:
    """The compatibility CNN of docs/specification.md §4.1: every convolution followed by its BatchNorm.

    Args:
        model: supplies every convolution (weight-normalised) and ``out_fc``; ``conv_bias`` is unused.
        bn: the BatchNorm layers (train or eval mode decides batch vs running statistics).
        images: (B, C, S, S).

    Returns:
        logits (B, classes).
    """
    W = model.effective_weights()
    strides = model.strides
    inp = CF.pool(bn.inp(F.conv2d(images, W.inp_conv, stride=2, padding=3)))
    xs: list[Tensor] = []
    for i in range(model.depth):
        h = _feedforward_input(model, W, i, xs, inp, skip_norm=bn.skip)
        ff = bn.ff[i](F.conv2d(h, W.area_area[i], stride=strides[i], padding=1))
        xs.append(torch.relu(bn.rec[i](F.conv2d(ff, W.area_conv[i], padding=1))))
    pooled = (xs[-1] + xs[-2]).mean(dim=(2, 3))
    return F.linear(pooled, W.out_weight, W.out_bias)


# ------------------------------------------------------------------------------------ folding
def _bn_affine(bn: nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
    """(scale, shift) of a BatchNorm in eval mode: y = scale * x + shift, per channel."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return scale, bn.bias - bn.running_mean * scale


def _fold_into(module: nn.Module, scale: Tensor) -> None:
    """Scale a weight-normalised layer's output channels: g' = g * scale, v' = v / ||v||."""
    par = module.parametrizations.weight
    g, v = par.original0, par.original1
    norm = torch.linalg.vector_norm(v.flatten(1), dim=1).view_as(g)
    g.copy_(g * scale.view_as(g))
    v.copy_(v / norm)


@torch.no_grad()
def fold_batchnorm(model: CordsNet, bn: BatchNormSet) -> FoldedCNN:
    """Fold the compatibility CNN's BatchNorms into `model` (in place); exact in eval mode.

    Each BatchNorm scales the convolution before it (``g' = g * gamma / sqrt(var + eps)``,
    ``v' = v / ||v||``) and leaves a per-channel shift ``beta - mean * gamma / sqrt(var + eps)``. The
    shifts become spatial maps: the ``area_conv`` BN's shift is ``conv_bias_i``; the ``area_area`` BN's
    shift starts ``area_bias_i``; the input BN's shift is pushed through the zero-padded avgpool (which
    makes it non-uniform at the borders) and then through ``area_area_0`` (area 0) or ``inp_skip`` and
    ``area_area_1`` (area 1); a skip BN's shift is pushed through ``area_area_{3+2j}``.

    Args:
        model: the model whose convolutions the compatibility CNN used; modified in place.
        bn: the trained BatchNorm layers (their running statistics are used).

    Returns:
        The :class:`FoldedCNN` holding ``area_bias`` and the CNN's recurrent convolutions. With it,
        :func:`folded_forward` equals :func:`compat_forward` with ``bn`` in eval mode.
    """
    cfg = model.config
    ref = model.out_fc.bias
    folded = FoldedCNN(model).to(device=ref.device, dtype=ref.dtype)
    strides = model.strides
    half = cfg.image_size // 2  # side of inp_conv's output

    # Per-channel shifts, before any layer is changed.
    s_inp, c_inp = _bn_affine(bn.inp)
    ff_aff = [_bn_affine(m) for m in bn.ff]
    rec_aff = [_bn_affine(m) for m in bn.rec]
    skip_aff = [_bn_affine(m) for m in bn.skip]

    _fold_into(model.inp_conv, s_inp)
    for i in range(cfg.depth):
        _fold_into(model.area_area[i], ff_aff[i][0])
        _fold_into(model.area_conv[i], rec_aff[i][0])
    for j, m in enumerate(model.skip_area):
        _fold_into(m, skip_aff[j][0])
    model.clear_caches()

    W = model.effective_weights()
    # The input BN's shift through the avgpool: a (1, 64, S/4, S/4) map, smaller at the borders.
    pool_shift = CF.pool(c_inp.view(1, -1, 1, 1).expand(1, -1, half, half).contiguous())
    for i, (c, h, w) in enumerate(cfg.state_shapes):
        bias = ff_aff[i][1].view(c, 1, 1).expand(c, h, w).clone()
        if i == 0:
            bias += F.conv2d(pool_shift, W.area_area[0], stride=strides[0], padding=1)[0]
        elif i == 1:
            bias += F.conv2d(F.conv2d(pool_shift, W.inp_skip, padding=1), W.area_area[1],
                             stride=strides[1], padding=1)[0]
        elif i % 2 == 1:  # odd area >= 3: the skip projection's shift
            j = (i - 3) // 2
            side = cfg.spatial_sizes[i - 1]
            shift = skip_aff[j][1].view(1, -1, 1, 1).expand(1, -1, side, side).contiguous()
            bias += F.conv2d(shift, W.area_area[i], stride=strides[i], padding=1)[0]
        folded.area_bias(i).copy_(bias)
        model.conv_bias[i].copy_(rec_aff[i][1].view(c, 1, 1).expand(c, h, w))
        folded.rec_weight(i).copy_(W.area_conv[i])
        folded.rec_bias(i).copy_(model.conv_bias[i])
    model.clear_caches()
    return folded


# --------------------------------------------------------------------------------- folded CNN
def folded_activity(model: CordsNet, folded: FoldedCNN, images: Tensor) -> CNNActivity:
    """The folded CNN of docs/specification.md §4.2: ``x_i = relu(rec_i(area_area_i(h_i) + area_bias_i) + rec_bias_i)``.

    The feedforward convolutions are the model's; the recurrent ones are the frozen CNN copies in
    `folded` (so the folded CNN stays the inverse stage's fixed target while the RNN's
    ``area_conv`` trains).

    Args:
        images: (B, C, S, S).

    Returns:
        :class:`CNNActivity` with the drive, each area's feedforward term and pre-activation, logits.
    """
    W = model.effective_weights()
    strides = model.strides
    u = CF.drive(W, images)
    xs: list[Tensor] = []
    ffs: list[Tensor] = []
    pres: list[Tensor] = []
    for i in range(model.depth):
        h = _feedforward_input(model, W, i, xs, u)
        ff = F.conv2d(h, W.area_area[i], stride=strides[i], padding=1)
        pre = F.conv2d(ff + folded.area_bias(i), folded.rec_weight(i), padding=1) + folded.rec_bias(i)
        ffs.append(ff)
        pres.append(pre)
        xs.append(torch.relu(pre))
    pooled = (xs[-1] + xs[-2]).mean(dim=(2, 3))
    logits = F.linear(pooled, W.out_weight, W.out_bias)
    return CNNActivity(u, tuple(ffs), tuple(pres), logits)


def folded_forward(model: CordsNet, folded: FoldedCNN, images: Tensor) -> Tensor:
    """Logits (B, classes) of the folded CNN (see :func:`folded_activity`)."""
    return folded_activity(model, folded, images).logits
