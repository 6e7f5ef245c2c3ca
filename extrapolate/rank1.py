"""The rank-1 picture of a weight update (docs/methods.md#rank-1-analysis), as pure tensor functions.

For a target module, Delta_t = W_t - W_0 with SVD sum_j s_j u_j v_j^T.
- LoRA fast path: Delta = scale * B A (B m x r, A r x n). QR-factor B = Q_B R_B and A^T = Q_A R_A, take the SVD of
  the r x r core scale * R_B R_A^T = U S V^T; then u = Q_B U, v = Q_A V, and the singular values are S. Cost
  O((m + n) r^2) instead of a dense SVD's O(m n min(m, n)). A difference of two LoRA states is again factored:
  scale_1 B_1 A_1 - scale_0 B_0 A_0 = [scale_1 B_1, -scale_0 B_0] [A_1; A_0] (rank <= 2r).
- Dense path (full checkpoints): the top-k triplets by randomized subspace iteration (Halko, Martinsson & Tropp
  2011, arXiv 0909.4061), never a full SVD; ||Delta||_F and sum_j s_j need the whole spectrum, so the dense
  metrics use the Frobenius norm exactly and the nuclear norm only where asked for (an exact SVD of a sample).
- Metrics: e1 = s_1 / sum_j s_j (NExt's dominance), energy1 = s_1^2 / ||Delta||_F^2, stable_rank = ||Delta||_F^2 /
  s_1^2; stability |<u_1(t), u_1(t')>|, |<v_1(t), v_1(t')>| between checkpoints.
- Sign alignment: singular vectors are defined up to a joint sign flip of (u, v); align each pair to a reference
  (flip both if <u, u_ref> < 0) before fitting anything across time (NExt's code omits this).
Inputs may be bfloat16, float16, float32 or float64: a single state's Gram matrices are formed in float32 (float64
if given), all r x r work and every difference of states in float64.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class Triplets:
    """Top-k singular triplets of one update: u [m, k], s [k] (descending), v [n, k]; plus the update's
    squared Frobenius norm and, when the whole spectrum is known, its nuclear norm (sum of singular values)."""

    u: torch.Tensor
    s: torch.Tensor
    v: torch.Tensor
    fro2: float
    nuclear: float | None

    def metrics(self) -> dict[str, float]:
        s1 = float(self.s[0])
        out = {"s1": s1, "energy1": s1**2 / self.fro2 if self.fro2 > 0 else 0.0,
               "stable_rank": self.fro2 / s1**2 if s1 > 0 else 0.0, "fro": self.fro2**0.5}
        if self.nuclear is not None:
            out["e1"] = s1 / self.nuclear if self.nuclear > 0 else 0.0
        return out


def lora_factors_difference(b1: torch.Tensor, a1: torch.Tensor, scale1: float,
                            b0: torch.Tensor | None = None, a0: torch.Tensor | None = None,
                            scale0: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, A) with B A = scale1 B1 A1 - scale0 B0 A0 (scales folded into B), rank <= r1 + r0.

    A single state stays in float32 unless given in float64 (bf16/fp16/fp32 checkpoints carry at most float32's
    precision, and float32 Gram matrices are twice as fast); a difference of two states is formed in float64,
    where cancellation would otherwise cost digits."""
    work = torch.float64 if b0 is not None or b1.dtype == torch.float64 else torch.float32
    b = b1.to(work) * scale1
    a = a1.to(work)
    if b0 is not None:
        b = torch.cat([b, -scale0 * b0.to(work)], dim=1)
        a = torch.cat([a, a0.to(work)], dim=0)
    return b, a


def norm_from_square(square: float) -> float:
    """||x|| from ||x||^2. A squared norm computed from factors as a sum of terms that cancel (e.g. ||B1 A1 - B2 A2||^2
    = <B1 A1, B1 A1> - 2 <B1 A1, B2 A2> + <B2 A2, B2 A2> for two nearly equal states) can round to slightly below
    zero: that is a zero norm, never a complex one."""
    return math.sqrt(max(square, 0.0))


def cosine_from_squares(dot: float, square_x: float, square_y: float) -> float:
    """cos(x, y) = <x, y> / (||x|| ||y||) from the inner product and the two squared norms, clipped to [-1, 1]; NaN
    when either vector is zero (a checkpoint with no update: it has no direction to compare)."""
    norms = norm_from_square(square_x) * norm_from_square(square_y)
    return max(-1.0, min(1.0, dot / norms)) if norms > 0 else math.nan


def lora_triplets(b: torch.Tensor, a: torch.Tensor, k: int = 1) -> Triplets:
    """Top-k triplets of Delta = B A (B m x r, A r x n) from the r x r triangular factors of B and A^T and an
    r x r core SVD. The triangular factors come from Cholesky of the Gram matrices B^T B = R_B^T R_B and
    A A^T = R_A^T R_A (two GEMMs: the same R as a QR up to signs, much faster than Householder QR on tall
    matrices); u = B R_B^-1 U and v = A^T R_A^-1 V for the top k columns only. The Gram matrices are formed in
    the factors' dtype (float32 or float64), everything r x r in float64. When B or A is rank-deficient
    (e.g. B = 0 at initialisation) Cholesky fails and the QR path is used, in float64."""
    if b.dtype not in (torch.float32, torch.float64):
        b, a = b.float(), a.float()
    r_b = torch.linalg.cholesky_ex((b.T @ b).double(), upper=True)
    r_a = torch.linalg.cholesky_ex((a @ a.T).double(), upper=True)
    if int(r_b.info) or int(r_a.info):
        b, a = b.double(), a.double()
        q_b, rb = torch.linalg.qr(b)
        q_a, ra = torch.linalg.qr(a.T)
        core_u, core_s, core_vh = torch.linalg.svd(rb @ ra.T)
        k = min(k, core_s.numel())
        return Triplets(u=q_b @ core_u[:, :k], s=core_s[:k], v=q_a @ core_vh[:k].T,
                        fro2=float((core_s**2).sum()), nuclear=float(core_s.sum()))
    core_u, core_s, core_vh = torch.linalg.svd(r_b.L @ r_a.L.T)
    k = min(k, core_s.numel())
    u = (b @ torch.linalg.solve_triangular(r_b.L, core_u[:, :k], upper=True).to(b.dtype)).double()
    v = (a.T @ torch.linalg.solve_triangular(r_a.L, core_vh[:k].T, upper=True).to(a.dtype)).double()
    return Triplets(u=u, s=core_s[:k], v=v, fro2=float((core_s**2).sum()), nuclear=float(core_s.sum()))


def dense_triplets(delta: torch.Tensor, k: int = 1, oversample: int = 10, iterations: int = 6,
                   seed: int = 0) -> Triplets:
    """Top-k triplets of a dense update by randomized subspace iteration (no full SVD of the m x n matrix)."""
    x = delta.double()
    m, n = x.shape
    width = min(k + oversample, m, n)
    gen = torch.Generator().manual_seed(seed)
    q = torch.linalg.qr(x @ torch.randn(n, width, dtype=torch.float64, generator=gen))[0]
    for _ in range(iterations):
        q = torch.linalg.qr(x.T @ q)[0]
        q = torch.linalg.qr(x @ q)[0]
    small_u, small_s, small_vh = torch.linalg.svd(q.T @ x, full_matrices=False)
    k = min(k, small_s.numel())
    return Triplets(u=q @ small_u[:, :k], s=small_s[:k], v=small_vh[:k].T, fro2=float((x**2).sum()), nuclear=None)


def align_sign(u: torch.Tensor, v: torch.Tensor, u_ref: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Flip (u, v) together, column by column, where <u, u_ref> < 0 (u v^T is unchanged)."""
    sign = torch.where((u * u_ref).sum(0) < 0, -1.0, 1.0).to(u.dtype)
    return u * sign, v * sign


def stability(u: torch.Tensor, v: torch.Tensor, u_prev: torch.Tensor, v_prev: torch.Tensor) -> tuple[float, float]:
    """|<u_1(t), u_1(t')>| and |<v_1(t), v_1(t')>| of the top direction."""
    return float((u[:, 0] @ u_prev[:, 0]).abs()), float((v[:, 0] @ v_prev[:, 0]).abs())


def growth_exponent(steps: list[float], norms: list[float]) -> float:
    """p of ||W_t - W_0|| ~ a t^p by least squares in log-log (1 = steady drift, 0.5 = random walk). Points with
    t <= 0 or a zero norm (no update yet: step 0, or a first step whose groups all scored alike) have no logarithm
    and are left out; ValueError when fewer than two remain."""
    points = [(t, n) for t, n in zip(steps, norms, strict=True) if t > 0 and n > 0]
    if len(points) < 2:
        raise ValueError(f"the growth law needs 2 checkpoints after step 0 with a nonzero update; steps {list(steps)} "
                         f"have {len(points)}")
    t = torch.log(torch.tensor([t for t, _ in points], dtype=torch.float64))
    y = torch.log(torch.tensor([n for _, n in points], dtype=torch.float64))
    t_c = t - t.mean()
    return float((t_c * (y - y.mean())).sum() / (t_c**2).sum())
