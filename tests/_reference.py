"""An independent, functional re-statement of §3 of docs/specification.md, for parity tests.

Written straight from the raw state-dict tensors (published layout), in float64, with none of the
package's code: weight norm is derived here, the drive is recomputed from the image, every area is
wired by hand.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

STRIDES = (1, 1, 2, 1, 2, 1, 2, 1)


def wn_weight(sd: dict, name: str) -> torch.Tensor:
    g = sd[f"{name}.parametrizations.weight.original0"].double()
    v = sd[f"{name}.parametrizations.weight.original1"].double()
    norm = v.flatten(1).norm(dim=1).reshape(-1, *([1] * (v.dim() - 1)))
    return g * v / norm


def reference_run(sd: dict, images: torch.Tensor, *, steps: int, spontaneous_steps: int,
                  alpha: float = 0.2, all_logits: bool = False, record: tuple[int, ...] = ()):
    """Logits (B, K) of the published protocol; images (B, C, S, S) or a sequence (B, T, C, S, S)."""
    depth = sum(1 for k in sd if k.startswith("area_conv.") and k.endswith("original1"))
    w_in, w_skip = wn_weight(sd, "inp_conv"), wn_weight(sd, "inp_skip")
    w_rec = [wn_weight(sd, f"area_conv.{i}") for i in range(depth)]
    w_ff = [wn_weight(sd, f"area_area.{i}") for i in range(depth)]
    w_proj = [wn_weight(sd, f"skip_area.{k}") for k in range(depth // 2 - 1)]
    bias = [sd[f"conv_bias.{i}"].double() for i in range(depth)]
    w_fc, b_fc = wn_weight(sd, "out_fc"), sd["out_fc.bias"].double()
    x = images.double()
    video = x.dim() == 5

    def drive(img):
        return F.avg_pool2d(F.conv2d(img, w_in, stride=2, padding=3), 3, 2, 1, count_include_pad=True)

    def step(rs, u):
        out = []
        for i in range(depth):
            if i == 0:
                h = u
            elif i == 1:
                h = torch.relu(rs[0]) + F.conv2d(u, w_skip, padding=1)
            elif i % 2 == 0:
                h = torch.relu(rs[i - 1]) + torch.relu(rs[i - 2])
            else:
                h = torch.relu(rs[i - 1]) + F.conv2d(torch.relu(rs[i - 2]), w_proj[(i - 3) // 2], stride=2)
            pre = F.conv2d(rs[i], w_rec[i], padding=1) + bias[i] + F.conv2d(h, w_ff[i], stride=STRIDES[i], padding=1)
            out.append((1 - alpha) * rs[i] + alpha * torch.relu(pre))
        return out

    def readout(rs):
        return F.linear((torch.relu(rs[-1]) + torch.relu(rs[-2])).mean(dim=(2, 3)), w_fc, b_fc)

    b = x.shape[0]
    first = x[:, 0] if video else x
    rs = [torch.zeros(b, *bias[i].shape, dtype=torch.float64) for i in range(depth)]
    blank = torch.zeros_like(first)
    for _ in range(spontaneous_steps):
        rs = step(rs, drive(blank))
    logits, rec = [], {a: [] for a in record}
    for t in range(steps):
        rs = step(rs, drive(x[:, t] if video else x))
        logits.append(readout(rs))
        for a in record:
            rec[a].append(rs[a])
    out = torch.stack(logits) if all_logits else logits[-1]
    if record:
        return out, {a: torch.stack(v) for a, v in rec.items()}
    return out


def max_rel_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| relative to the logit scale max |b|."""
    a, b = a.double(), b.double()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))
