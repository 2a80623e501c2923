"""L2-regularised multinomial logistic regression: a strongly convex, non-quadratic test.

The set-up (ours; the paper's exact one was not available), fixed before any run by
the rules below, which look only at the data, never at a method's result:

* data: sklearn's 8x8 digits (n = 1797, default) or the MNIST training images (IDX
  files in ``--data-dir``); pixels scaled to [0, 1], a constant feature 1 appended (the
  bias), so ``W`` is ``(10, 65)`` or ``(10, 785)``;
* ``f(W) = mean_i CE(W x_i, y_i) + lam/2 ||W||^2`` with ``lam = 0.03`` (bias included,
  so ``f`` is ``lam``-strongly convex in every direction). ``lam`` is large enough that
  ``max |w*|`` (0.72 on digits) leaves room in ``[-2, 2)`` for the F = 4 fluctuations;
* ``w* = argmin f`` in float64 by L-BFGS, then Newton-CG, until ``||grad f(w*)|| < 1e-10``;
* step ``= 1 / (2 L0)`` with ``L0 = lambda_max(X^T X / n) / 10 + lam``, the curvature of
  ``f`` at ``W = 0`` (1.17 on digits, so step 0.43);
* mixing time ``1 / (step * lam)`` (78 steps on digits): the averaging window ``T/2``
  must be long against it, so ``T_max`` is the smallest power of two with
  ``T_max / 2 >= 100`` mixing times (16384 on digits), and records are kept at
  ``T_max / 2`` and ``T_max``;
* minibatch SGD, batch 16, from ``W = 0``; F in {4, 6, 8, 10}; 4 replicates.

Example:
    >>> from swalp.experiments.convex.logreg import LogRegConfig, run
    >>> summary = run(LogRegConfig.quick())  # doctest: +SKIP
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch
import torch.nn.functional as nnf

from ..._checks import check_choice
from ...data.mnist import load_mnist_arrays
from ._runner import Problem, RunSpec, fixed_format, lookup, one_thread, run_methods, slopes

DATASETS = ("digits", "mnist")


@dataclass(frozen=True)
class LogRegConfig:
    """Every default of ``swalp reproduce logreg``; ``step``/``T_values`` None: by the rules."""

    data: str = "digits"
    data_dir: str | None = None
    lam: float = 0.03
    F_values: tuple[int, ...] = (4, 6, 8, 10)
    T_values: tuple[int, ...] | None = None
    step: float | None = None
    window_mixing: float = 100.0
    batch: int = 16
    replicates: int = 4
    seed: int = 0
    tol: float = 1e-10

    def __post_init__(self):
        check_choice("data", self.data, DATASETS)
        if self.data == "mnist" and not self.data_dir:
            raise ValueError("--data mnist needs --data-dir (a folder with the MNIST IDX files)")
        if not self.lam > 0:
            raise ValueError(f"lam must be > 0 (strong convexity), got {self.lam}")

    @classmethod
    def quick(cls, **kw) -> "LogRegConfig":
        return cls(T_values=(1024, 2048), replicates=2, **kw)


def load_data(cfg: LogRegConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Features ``(n, D)`` in [0, 1] with a last constant column 1, labels ``(n,)``."""
    if cfg.data == "digits":
        from sklearn.datasets import load_digits

        x, y = load_digits(return_X_y=True)
        x = x / 16.0
    else:
        x_train, y, _, _ = load_mnist_arrays(cfg.data_dir)
        x = x_train.reshape(len(x_train), -1) / 255.0
    X = torch.as_tensor(np.asarray(x, np.float64))
    X = torch.cat([X, torch.ones(len(X), 1, dtype=torch.float64)], 1)
    return X, torch.as_tensor(np.asarray(y, np.int64))


def objective(X, y, lam):
    """``f(W)`` for ``W`` of shape ``(..., C, D)``: the mean cross-entropy plus ``lam/2 ||W||^2``."""

    def f(W):
        logits = torch.einsum("nd,...cd->...nc", X, W)
        ce = torch.logsumexp(logits, -1).mean(-1) - logits.gather(-1, y.expand(*logits.shape[:-1]).unsqueeze(-1)).squeeze(-1).mean(-1)
        return ce + lam / 2 * W.pow(2).sum((-2, -1))

    return f


def solve_optimum(f, shape, tol: float = 1e-10) -> tuple[torch.Tensor, float]:
    """``argmin f`` in float64, to a gradient norm below ``tol``.

    L-BFGS (strong Wolfe) down to a gradient norm of 1e-7, where the line search starts
    to fail (the loss decrease is at float64's resolution), then Newton steps whose
    systems ``H p = -g`` are solved by conjugate gradients on Hessian-vector products
    (quadratic convergence: two or three steps). Returns ``(w*, ||grad f(w*)||)``;
    raises RuntimeError if ``tol`` is not reached.
    """
    W = torch.zeros(shape, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([W], lr=1, max_iter=1000, history_size=20, tolerance_grad=1e-8,
                            tolerance_change=0.0, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = f(W)
        loss.backward()
        return loss

    opt.step(closure)
    W = W.detach()
    for _ in range(10):
        W.requires_grad_(True)
        (g,) = torch.autograd.grad(f(W), W, create_graph=True)
        gnorm = g.norm().item()
        if gnorm < tol:
            return W.detach(), gnorm
        p = _conjugate_gradient(lambda v: torch.autograd.grad(g, W, v, retain_graph=True)[0], -g.detach())
        W = (W + p).detach()
    raise RuntimeError(f"the optimum's gradient norm did not fall below {tol:g} (last {gnorm:.2e})")


def _conjugate_gradient(hvp, b, rtol: float = 1e-13, maxiter: int = 1000):
    """Solve ``H x = b`` for symmetric positive definite ``H`` given as ``hvp(v) = H v``."""
    x = torch.zeros_like(b)
    r, p = b.clone(), b.clone()
    rr = r.pow(2).sum()
    stop = rtol**2 * rr
    for _ in range(maxiter):
        Hp = hvp(p)
        a = rr / (p * Hp).sum()
        x += a * p
        r -= a * Hp
        rr_new = r.pow(2).sum()
        if rr_new <= stop:
            break
        p = r + rr_new / rr * p
        rr = rr_new
    return x


def make_problem(cfg: LogRegConfig) -> tuple[Problem, dict, LogRegConfig]:
    """The problem, facts about it, and ``cfg`` with ``step``/``T_values`` filled in."""
    X, y = load_data(cfg)
    n, D = X.shape
    C = int(y.max()) + 1
    f = objective(X, y, cfg.lam)
    with one_thread():
        w_star, gnorm = solve_optimum(f, (C, D), cfg.tol)
    f_star = f(w_star).item()
    L0 = torch.linalg.eigvalsh(X.T @ X / n)[-1].item() / C + cfg.lam
    step = cfg.step if cfg.step is not None else 1 / (2 * L0)
    mixing = 1 / (step * cfg.lam)
    if cfg.T_values is None:
        T_max = 2 ** math.ceil(math.log2(2 * cfg.window_mixing * mixing))
        cfg = replace(cfg, T_values=(T_max // 2, T_max))
    cfg = replace(cfg, step=step)
    fmt = fixed_format(min(cfg.F_values))
    w_max = w_star.abs().max().item()
    if not (fmt.min_value < -w_max and w_max < fmt.max_value):
        raise ValueError(f"max |w*| = {w_max:.3f} is outside the range of {fmt}; increase lam")
    onehot = nnf.one_hot(y, C).to(torch.float64)

    def grad(W, idx):
        Xb, Yb = X[idx], onehot[idx]  # (R, B, D), (R, B, C)
        p = torch.softmax(torch.einsum("rbd,rmcd->rmbc", Xb, W), -1) - Yb.unsqueeze(1)
        return torch.einsum("rmbc,rbd->rmcd", p, Xb) / idx.shape[1] + cfg.lam * W

    info = {"n": n, "features": D, "classes": C, "w_star_max_abs": w_max, "f_star": f_star,
            "grad_norm_at_w_star": gnorm, "L0": L0, "step": step, "mixing_steps": mixing,
            "window_over_mixing": min(cfg.T_values) / 2 / mixing,
            "train_accuracy_at_w_star": (X @ w_star.T).argmax(1).eq(y).double().mean().item()}
    return Problem(f"logreg-{cfg.data}", n, grad, w_star, f, f_star), info, cfg


def run(cfg: LogRegConfig = LogRegConfig(), progress=None) -> dict:
    """Run the experiment; return the summary."""
    problem, info, cfg = make_problem(cfg)
    if progress:
        progress(f"optimum: |grad| = {info['grad_norm_at_w_star']:.1e}; step {cfg.step:.4f}, T {cfg.T_values}")
    spec = RunSpec(cfg.F_values, cfg.T_values, cfg.step, cfg.batch, cfg.replicates, cfg.seed)
    out = run_methods(problem, spec, progress)
    res, T = out["results"], max(cfg.T_values)
    checks = {str(F): {"sgd_lp_over_swalp_loss_gap": lookup(res, "sgd_lp", F, T, "loss_gap") / lookup(res, "swalp", F, T, "loss_gap"),
                       "sgd_lp_over_swalp_dist2": lookup(res, "sgd_lp", F, T) / lookup(res, "swalp", F, T)}
              for F in cfg.F_values}
    return {
        "experiment": "logreg",
        "config": asdict(cfg),
        "problem": info,
        "results": res,
        "curves": out["curves"],
        "slopes": {**{m: slopes(res, T, m) for m in ("dist2", "loss_gap")},
                   **{f"{m}_excess": slopes(res, T, m, excess=True) for m in ("dist2", "loss_gap")}},
        "checks": checks,
    }
