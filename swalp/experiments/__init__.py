"""The paper's evidence, one command each: ``compare.py`` (``swalp compare``: SGD-FP, SWA-FP,
SGD-LP and SWALP on a network), ``ablations.py`` (``swalp ablation NAME``) and ``convex/``
(``swalp reproduce linreg|logreg``).

Example:
    >>> from swalp.experiments import LABELS
    >>> list(LABELS.values())
    ['SGD-FP', 'SWA-FP', 'SGD-LP', 'SWALP']
"""

from .ablations import ABLATIONS, ablation
from .compare import compare
from .methods import LABELS, METHODS

__all__ = ["ABLATIONS", "LABELS", "METHODS", "ablation", "compare"]
