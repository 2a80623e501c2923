"""Checkpoints of a training run: atomic writes, RNG states, and clear errors on bad files.

A checkpoint is a dict saved with ``torch.save`` and read back with ``weights_only=True``
(no arbitrary code runs when loading): tensors, numbers, strings, lists, dicts only.
"""

from __future__ import annotations

import pickle
import random
import zipfile
from pathlib import Path

import numpy as np
import torch

from .._files import atomic_write

CHECKPOINT_KIND = "swalp-train-checkpoint"
CHECKPOINT_VERSION = 3  # 3: packed weights as PackedTensor state dicts; 2: quantized layers keep their names
READABLE_VERSIONS = (2, 3)  # a version-2 checkpoint is a version 3 one without packed weights


def rng_state() -> dict:
    """The states of torch's (CPU and CUDA), numpy's and python's global generators."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": [list(x) if isinstance(x, tuple) else x for x in random.getstate()],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path, state: dict) -> None:
    """Write ``state`` (tagged with this format's kind and version) atomically to ``path``."""
    state = {"kind": CHECKPOINT_KIND, "version": CHECKPOINT_VERSION, **state}
    atomic_write(path, lambda f: torch.save(state, f))


def load_checkpoint(path, map_location="cpu") -> dict:
    """Read a checkpoint written by :func:`save_checkpoint`.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is truncated, corrupt, or not a swalp training checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}: --resume takes the --out folder of a run "
                                f"that finished at least one epoch (it holds checkpoint.pt)")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError, OSError) as err:
        raise ValueError(f"checkpoint {path} is corrupt or not a swalp training checkpoint "
                         f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})") from None
    if not isinstance(state, dict) or state.get("kind") != CHECKPOINT_KIND:
        raise ValueError(f"{path} is not a swalp training checkpoint (expected kind {CHECKPOINT_KIND!r})")
    if state.get("version") not in READABLE_VERSIONS:
        raise ValueError(f"checkpoint {path} has version {state.get('version')!r}; "
                         f"this swalp reads versions {', '.join(map(str, READABLE_VERSIONS))}")
    return state
