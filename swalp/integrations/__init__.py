"""SWALP inside the trainers people use: :mod:`swalp.integrations.lightning` (a callback).

Each integration is an optional extra (``pip install 'swalp[lightning]'``); importing its
module without the extra raises an ImportError that names it. ``import swalp`` never
imports them. Hugging Face Accelerate needs no module here: ``accelerator.prepare`` takes a
:class:`swalp.LowPrecisionOptimizer` and :class:`swalp.SWALPLR` as they are, and
``accelerator.register_for_checkpointing(average)`` saves the :class:`swalp.WeightAverage`
(README, "With Accelerate"; ``tests/test_accelerate.py``).
"""

from __future__ import annotations

import importlib


def _require(module: str, extra: str):
    """``importlib.import_module(module)``, or an ImportError saying which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(f"{module} is not installed; this integration needs it: pip install 'swalp[{extra}]'") from e
