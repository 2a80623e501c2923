"""Files: one way to write them atomically, and one cache folder.

Every file swalp writes (checkpoints, metrics, summaries, tables, plots, the embedded data
sets' cache, downloads) goes through :func:`atomic_write`: a crash mid-write leaves the
previous file intact, never half of a new one. The C++ kernels' build and the generated
data sets share one cache folder, :func:`cache_dir`.

Not public.

Example:
    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "hello.txt"
    >>> _ = atomic_write_text(path, "hi\\n"); path.read_text()
    'hi\\n'
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import BinaryIO, Callable


def atomic_write(path, write: Callable[[BinaryIO], object]) -> Path:
    """Call ``write(file)`` on a temporary file next to ``path``, then rename it over ``path``.

    ``os.replace`` is atomic on POSIX and Windows when both names are on one file system,
    which a sibling file is. If ``write`` raises, the temporary file is removed and ``path``
    is left as it was. Returns ``path``.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def atomic_write_text(path, text: str) -> Path:
    return atomic_write(path, lambda f: f.write(text.encode()))


def to_json(obj, indent: int = 2) -> str:
    """How swalp writes a JSON file: indented, with a final newline."""
    return json.dumps(obj, indent=indent) + "\n"


def write_json(path, obj, indent: int = 2) -> Path:
    return atomic_write_text(path, to_json(obj, indent))


def cache_dir(folder=None) -> Path:
    """``folder`` if given, else ``$SWALP_CACHE_DIR``, else ``$XDG_CACHE_HOME/swalp``, else
    ``~/.cache/swalp``: where the C++ kernels are built and generated data sets are kept."""
    if folder is not None:
        return Path(folder)
    if os.environ.get("SWALP_CACHE_DIR"):
        return Path(os.environ["SWALP_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "swalp"
