"""Linear regression (least squares): SWALP converges, low-precision SGD stalls.

The set-up (ours; the paper's exact one was not available), fixed before any run:

* data from ``seed``: design ``X`` (n = 1024, d = 64) i.i.d. N(0, 1), true weights
  ``w_true`` ~ U[-1, 1]^d, labels ``y = X w_true + 0.1 * N(0, 1)``;
* objective ``f(w) = ||X w - y||^2 / (2 n)``; its Hessian ``X^T X / n`` has eigenvalues
  in about [0.56, 1.56] (Marchenko-Pastur for d/n = 1/16);
* ``w* = lstsq(X, y)`` in float64, exact to rounding. ``|w* - w_true|`` is of order
  ``0.1 / sqrt(n)``, so ``max |w*|`` stays below about 1.05, well inside the range
  ``[-2, 2 - 2^-F]`` of ``FixedPoint(F + 2, F)``; :func:`make_problem` checks it;
* minibatch SGD, batch 16 (with replacement), constant step 0.1, from ``w = 0``;
  averaging from ``T/2`` on. The slowest direction mixes in ``1 / (0.1 * 0.56)`` = 18
  steps, so even the shortest window (T/2 = 2048) spans over 100 mixing times;
* F in {4, 6, 8}, T in {4096, 8192, 16384}, 16 replicates (independent minibatches
  and rounding), every figure a mean over them.

Example:
    >>> from swalp.experiments.convex.linreg import LinRegConfig, run
    >>> summary = run(LinRegConfig(T_values=(64, 128), replicates=1))  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from ._runner import Problem, RunSpec, fixed_format, lookup, run_methods, slopes


@dataclass(frozen=True)
class LinRegConfig:
    """Every default of ``swalp reproduce linreg`` (``quick()`` for the test-sized run)."""

    n: int = 1024
    d: int = 64
    noise: float = 0.1
    F_values: tuple[int, ...] = (4, 6, 8)
    T_values: tuple[int, ...] = (4096, 8192, 16384)
    step: float = 0.1
    batch: int = 16
    replicates: int = 16
    seed: int = 0

    @classmethod
    def quick(cls, **kw) -> "LinRegConfig":
        return cls(T_values=(512, 1024), replicates=2, **kw)


def make_problem(cfg: LinRegConfig) -> tuple[Problem, dict]:
    """The synthetic least-squares problem of ``cfg.seed`` and facts about its optimum."""
    gen = torch.Generator().manual_seed(cfg.seed)
    X = torch.randn(cfg.n, cfg.d, generator=gen, dtype=torch.float64)
    w_true = torch.rand(cfg.d, generator=gen, dtype=torch.float64) * 2 - 1
    y = X @ w_true + cfg.noise * torch.randn(cfg.n, generator=gen, dtype=torch.float64)
    w_star = torch.linalg.lstsq(X, y.unsqueeze(1), driver="gelsd").solution.squeeze(1)
    grad_star = X.T @ (X @ w_star - y) / cfg.n
    eig = torch.linalg.eigvalsh(X.T @ X / cfg.n)
    fmt = fixed_format(min(cfg.F_values))
    w_max = w_star.abs().max().item()
    if not (fmt.min_value < -w_max and w_max < fmt.max_value):
        raise ValueError(f"max |w*| = {w_max:.3f} is outside the range of {fmt}")

    def grad(W, idx):
        Xb, yb = X[idx], y[idx]  # (R, B, d), (R, B)
        resid = torch.einsum("rbd,rmd->rmb", Xb, W) - yb.unsqueeze(1)
        return torch.einsum("rmb,rbd->rmd", resid, Xb) / idx.shape[1]

    info = {"w_star_max_abs": w_max, "w_true_dist2": (w_star - w_true).pow(2).sum().item(),
            "grad_norm_at_w_star": grad_star.norm().item(),
            "hessian_eig_min": eig[0].item(), "hessian_eig_max": eig[-1].item(),
            "mixing_steps": 1 / (cfg.step * eig[0].item())}
    return Problem("linreg", cfg.n, grad, w_star), info


def run(cfg: LinRegConfig = LinRegConfig(), progress=None) -> dict:
    """Run the experiment; return the summary (see :func:`swalp.experiments.convex.report.write`)."""
    problem, info = make_problem(cfg)
    spec = RunSpec(cfg.F_values, cfg.T_values, cfg.step, cfg.batch, cfg.replicates, cfg.seed)
    out = run_methods(problem, spec, progress)
    res, Ts = out["results"], sorted(cfg.T_values)
    checks = {}
    for F in cfg.F_values:
        swalp = [lookup(res, "swalp", F, T) for T in Ts]
        sgd_lp = [lookup(res, "sgd_lp", F, T) for T in Ts]
        checks[str(F)] = {
            "sgd_lp_over_swalp": sgd_lp[-1] / swalp[-1],
            "swalp_doubling_ratio": swalp[-1] / swalp[-2] if len(Ts) > 1 else None,
            "sgd_lp_doubling_ratio": sgd_lp[-1] / sgd_lp[-2] if len(Ts) > 1 else None,
        }
    return {
        "experiment": "linreg",
        "config": asdict(cfg),
        "problem": info,
        "results": res,
        "curves": out["curves"],
        "slopes": {"dist2": slopes(res, Ts[-1], "dist2"), "dist2_excess": slopes(res, Ts[-1], "dist2", excess=True)},
        "checks": checks,
    }
