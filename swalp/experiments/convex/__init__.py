"""The paper's convex evidence: linear and logistic regression in fixed point.

``swalp reproduce linreg`` and ``swalp reproduce logreg`` run :func:`linreg.run` and
:func:`logreg.run`: SGD-FP, SWA-FP, SGD-LP and SWALP on one objective whose optimum
is known in float64, with weights in ``FixedPoint(F + 2, F)`` and stochastic rounding;
:func:`report.write` saves the summary, a table and the figures. docs/convex.md shows
the results and the set-up.

Example:
    >>> from swalp.experiments.convex import linreg, report
    >>> summary = linreg.run(linreg.LinRegConfig.quick())       # doctest: +SKIP
    >>> report.write(summary, "runs/convex-linreg", "linreg")   # doctest: +SKIP
"""

from . import linreg, logreg, report

EXPERIMENTS = {"linreg": linreg, "logreg": logreg}  # `swalp reproduce NAME`

__all__ = ["EXPERIMENTS", "linreg", "logreg", "report"]
