"""The paper's evidence, one command each: ``compare.py`` (``swalp compare``: SGD-FP, SWA-FP,
SGD-LP and SWALP on a network) and ``convex/`` (``swalp reproduce linreg|logreg``).

Example:
    >>> from swalp.experiments import LABELS
    >>> list(LABELS.values())
    ['SGD-FP', 'SWA-FP', 'SGD-LP', 'SWALP']
"""

from .compare import compare
from .methods import LABELS, METHODS

__all__ = ["LABELS", "METHODS", "compare"]
