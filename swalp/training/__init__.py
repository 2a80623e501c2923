"""The main job, ``swalp train``: train in low precision, average, evaluate, save.

* ``config.py``: :class:`TrainConfig` (every setting, every default in sight) and :func:`resolve`.
* ``loop.py``: :func:`train` = :func:`start` (build a :class:`Run`) + :func:`fit` (its epochs).
* ``evaluate.py``: test errors, the average as a full-precision model.
* ``checkpoint.py``: checkpoints and generator states; ``distributed.py``: torchrun;
  ``accel.py``: GPU placement helpers.

Example:
    >>> from swalp.training import TrainConfig, start, fit
    >>> run = start(TrainConfig(data="digits", epochs=2, budget=1, limit_train=64, out="/tmp/swalp-run"), log=None,
    ...             overwrite=True)  # the folder may hold this example's earlier run
    >>> summary = fit(run, progress=False, log=None)
    >>> run.epoch, int(run.average.n_averaged)  # averaged at the end of epochs 1 and 2
    (2, 2)
"""

from .checkpoint import load_checkpoint
from .config import AVG_UNITS, TrainConfig, pick_device, resolve
from .loop import Diverged, Run, build, fit, start, train

__all__ = ["AVG_UNITS", "Diverged", "Run", "TrainConfig", "build", "fit", "load_checkpoint", "pick_device",
           "resolve", "start", "train"]
