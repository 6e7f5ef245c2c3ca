"""NExt (Nonlinear Extrapolation of low-rank trajectories, arXiv 2604.11446; docs/methods.md#next), with sign alignment.

At each checkpoint t of the window, the rank-1 triplets of the global update (W_t - W_0) and of the local update
(W_t - W_{t-1 checkpoint}) are the inputs; the target is the rank-1 triplet of the future update W_{t+H} - W_t
(H in checkpoints). One small network per vector size, shared across modules (u vectors of size m, v vectors of
size n, and the scalar s): a global encoder and a local encoder, each Linear(d,256)-Linear(256,d)-ReLU-
Linear(d,256)-Linear(256,d), concatenated, then a decoder Linear(2d,256)-Linear(256,2d)-ReLU-Linear(2d,256)-
Linear(256,d). L1 loss, AdamW lr 2e-5 with cosine decay to 2e-6, 1000 full-batch steps. At the leap, predict
(u^, s^, v^) from the newest checkpoint, normalise u^ and v^, and set W^ = W_t + alpha s^ u^ v^^T (alpha = 1.5).
Every triplet is sign-aligned to the global update's direction before training (the authors' code omits this).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from extrapolate.base import Extrapolator
from extrapolate.rank1 import align_sign, lora_factors_difference, lora_triplets


def _encoder(d: int, hidden: int = 256) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d, hidden), nn.Linear(hidden, d), nn.ReLU(), nn.Linear(d, hidden),
                         nn.Linear(hidden, d))


class TripletNet(nn.Module):
    """NExt's predictor for vectors of one size d: global and local encoders, then a decoder."""

    def __init__(self, d: int, hidden: int = 256):
        super().__init__()
        self.global_encoder, self.local_encoder = _encoder(d, hidden), _encoder(d, hidden)
        self.decoder = nn.Sequential(nn.Linear(2 * d, hidden), nn.Linear(hidden, 2 * d), nn.ReLU(),
                                     nn.Linear(2 * d, hidden), nn.Linear(hidden, d))

    def forward(self, global_x: torch.Tensor, local_x: torch.Tensor) -> torch.Tensor:
        return self.decoder(torch.cat([self.global_encoder(global_x), self.local_encoder(local_x)], dim=-1))


def train_net(d: int, inputs_g: torch.Tensor, inputs_l: torch.Tensor, targets: torch.Tensor, steps: int,
              lr: float = 2e-5, lr_min: float = 2e-6, seed: int = 0) -> tuple[TripletNet, list[float]]:
    """Full-batch L1 training with AdamW and cosine decay; returns the net and its loss curve."""
    torch.manual_seed(seed)
    net = TripletNet(d)
    opt = torch.optim.AdamW(net.parameters(), lr=lr)
    losses = []
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr_min + 0.5 * (lr - lr_min) * (1 + math.cos(math.pi * step / max(1, steps)))
        loss = (net(inputs_g, inputs_l) - targets).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return net, losses


class NExt(Extrapolator):
    name = "next"
    min_checkpoints = 3
    alpha = 1.5
    train_steps = 1000

    def _triplets(self, i: int, j: int | None, name: str):
        """Top triplet (u, s, v) of W_i - W_j (j None: W_0) of one module, float32."""
        mi = self.window[i][1][name]
        if j is None:
            b, a = lora_factors_difference(mi.b, mi.a, mi.scale)
        else:
            mj = self.window[j][1][name]
            b, a = lora_factors_difference(mi.b, mi.a, mi.scale, mj.b, mj.a, mj.scale)
        trip = lora_triplets(b, a)
        return trip.u[:, 0], trip.s[0], trip.v[:, 0]

    def predict(self, target_step: int):
        steps = [s for s, _ in self.window]
        spacing = steps[-1] - steps[-2]
        h = max(1, round((target_step - steps[-1]) / spacing))
        pairs = [i for i in range(1, len(steps) - h)]
        if not pairs:
            raise ValueError(f"next: a horizon of {h} checkpoints needs a window of at least {h + 2} checkpoints, "
                             f"got {len(steps)}; widen the window or lower --target-step")
        names = list(self.window[-1][1])
        rows = []
        for name in names:
            for i in pairs + [len(steps) - 1]:
                ug, sg, vg = self._triplets(i, None, name)
                ul, sl, vl = self._triplets(i, i - 1, name)
                ul, vl = (x[:, 0] for x in align_sign(ul[:, None], vl[:, None], ug[:, None]))
                row = {"g": (ug, sg, vg), "l": (ul, sl, vl), "name": name, "i": i}
                if i + h < len(steps):
                    uf, sf, vf = self._triplets(i + h, i, name)
                    uf, vf = (x[:, 0] for x in align_sign(uf[:, None], vf[:, None], ug[:, None]))
                    row["f"] = (uf, sf, vf)
                rows.append(row)
        self.losses = {}
        nets = {}
        for part, index in (("u", 0), ("s", 1), ("v", 2)):
            by_size: dict[int, list] = {}
            for row in rows:
                if "f" in row:
                    size = 1 if part == "s" else row["g"][index].numel()
                    by_size.setdefault(size, []).append(row)
            for size, train_rows in by_size.items():
                g = torch.stack([r["g"][index].reshape(size).float() for r in train_rows])
                loc = torch.stack([r["l"][index].reshape(size).float() for r in train_rows])
                f = torch.stack([r["f"][index].reshape(size).float() for r in train_rows])
                nets[(part, size)], self.losses[(part, size)] = train_net(size, g, loc, f, self.train_steps)
        out = {}
        last = len(steps) - 1
        for row in rows:
            if row["i"] != last:
                continue
            name = row["name"]
            with torch.no_grad():
                pred = []
                for part, index in (("u", 0), ("s", 1), ("v", 2)):
                    size = 1 if part == "s" else row["g"][index].numel()
                    g = row["g"][index].reshape(1, size).float()
                    loc = row["l"][index].reshape(1, size).float()
                    pred.append(nets[(part, size)](g, loc)[0].double())
            u_hat, s_hat, v_hat = pred[0] / pred[0].norm(), float(pred[1][0]), pred[2] / pred[2].norm()
            m = self.window[-1][1][name]
            b_w, a_w = lora_factors_difference(m.b, m.a, m.scale)
            out[name] = (torch.cat([b_w, (self.alpha * s_hat) * u_hat[:, None]], 1), torch.cat([a_w, v_hat[None]], 0))
        return out
