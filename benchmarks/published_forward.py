"""A straightforward re-statement of the published forward pass, the baseline of the benchmarks.

As the published code does it: the spontaneous phase is simulated for every call, the image drive
``avgpool(inp_conv(x))`` is recomputed for every area at every step, and every weight is re-derived
from g and v at every use (``module.weight`` of a weight-norm parametrization). It reads the weights of
a :class:`cordsnet.model.CordsNet`, so both run the same model.
"""

from __future__ import annotations

import argparse

import torch
from torch import Tensor

from cordsnet.model import CordsNet


def published_forward(model: CordsNet, images: Tensor, steps: int = 100, spontaneous_steps: int = 100,
                      alpha: float = 0.2) -> Tensor:
    """Logits (B, K) of the published protocol for images (B, C, S, S), computed the published way."""
    depth = model.config.depth
    batch = images.shape[0]
    rs = [torch.zeros(batch, *shape) for shape in model.config.state_shapes]
    blank = torch.zeros_like(images)
    for t in range(spontaneous_steps + steps):
        x = blank if t < spontaneous_steps else images
        new = [None] * depth
        for i in reversed(range(depth)):  # deepest area first, reading the previous step's rates
            u = torch.nn.functional.avg_pool2d(model.inp_conv(x), 3, stride=2, padding=1)  # the drive, recomputed for every area
            if i == 0:
                h = u
            elif i == 1:
                h = torch.relu(rs[0]) + model.inp_skip(u)
            elif i % 2 == 0:
                h = torch.relu(rs[i - 1]) + torch.relu(rs[i - 2])
            else:
                h = torch.relu(rs[i - 1]) + model.skip_area[(i - 3) // 2](torch.relu(rs[i - 2]))
            pre = model.area_conv[i](rs[i]) + model.conv_bias[i] + model.area_area[i](h)
            new[i] = (1 - alpha) * rs[i] + alpha * torch.relu(pre)
        rs = new
    return model.out_fc((torch.relu(rs[-1]) + torch.relu(rs[-2])).mean(dim=(2, 3)))


def add_protocol_arguments(ap: argparse.ArgumentParser) -> None:
    """The options every published-protocol benchmark takes: --depth, --size, --steps, --spontaneous."""
    ap.add_argument("--depth", type=int, default=8)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--spontaneous", type=int, default=100)
