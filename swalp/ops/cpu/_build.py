"""Build and load the C++ CPU kernels (``csrc/*.cpp`` beside this file) on first use.

Nothing is compiled at ``import swalp``: the first CPU quantization builds the kernels
with :func:`torch.utils.cpp_extension.load` (about a minute, once) into a per-user cache,
``$SWALP_CACHE_DIR`` or ``~/.cache/swalp`` (``$XDG_CACHE_HOME/swalp``), in a folder named
by a hash of the source, the compiler and its flags, the Python (and its environment's torch
headers) and torch versions, built by one process at a time (a file lock); later
processes load the cached library in well under a second (:func:`swalp._files.cache_dir`). Without a working compiler
(or ninja) the backend warns once and computes with the reference instead, so results
are the same, only slower.

Compiler flags: ``-O3`` for the auto-vectoriser, ``-fopenmp`` so that ``at::parallel_for``
uses torch's threads (:func:`openmp_flags`), ``-ffp-contract=off`` so that no
multiply-add is fused unless the source says ``std::fma`` (bit-exact results must not
depend on the compiler; ``-mfma`` makes those one instruction, as torch's own AVX2 kernels
have them), and ``-mavx2 -mf16c -mfma`` only when torch reports that the CPU running the
build has AVX2 (torch's AVX2 requires FMA too). The
choice is part of the cache key, so a home folder shared by machines of different
CPU generations gets one build per kind of CPU rather than a build that crashes on
the older one (which ``-march=native`` would risk).

Not public: ``swalp/ops/cpu/__init__.py`` makes the "cpp" backend of it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import threading
import warnings
from pathlib import Path
from typing import Iterator

import torch

from ..._files import cache_dir

try:
    import fcntl
except ImportError:  # not POSIX: builds are not serialised across processes there
    fcntl = None

_CSRC = Path(__file__).with_name("csrc")
SOURCES = [_CSRC / name for name in ("quantize.cpp", "pack.cpp", "unpack.cpp", "output.cpp", "ste.cpp", "stats.cpp",
                                     "mask.cpp", "sgd.cpp", "comm.cpp", "int8.cpp")]
HEADERS = [_CSRC / "quant.h"]  # in the cache key too: a change to the kernels rebuilds
_BASE_FLAGS = ["-O3", "-ffp-contract=off", "-fno-trapping-math", "-fno-math-errno"]

_lock = threading.Lock()
_state: str | None = None  # None: not tried yet; "ok"; "failed"


def cflags() -> list[str]:
    """Compiler flags for this machine (see the module docstring for why)."""
    flags = list(_BASE_FLAGS)
    x86 = platform.machine().lower() in ("x86_64", "amd64")
    cap = torch.backends.cpu.get_cpu_capability() if x86 else "DEFAULT"
    if cap in ("AVX2", "AVX512"):
        flags += ["-mavx2", "-mf16c", "-mfma"]
    if cap == "AVX512":  # 16 lanes: halves the instructions of the random-number hash
        flags += ["-mavx512f", "-mavx512vl", "-mavx512bw", "-mavx512dq", "-mprefer-vector-width=512"]
    return flags + openmp_flags()


def openmp_flags() -> list[str]:
    """``-fopenmp`` where torch's own threads are OpenMP's.

    ``at::parallel_for`` is a header template: under torch's OpenMP backend it expands to an
    ``omp parallel`` region, which a compiler without ``-fopenmp`` silently ignores, and
    every kernel would run on one thread.
    """
    openmp = "parallel backend: OpenMP" in torch.__config__.parallel_info()
    return ["-fopenmp"] if openmp and sys.platform.startswith("linux") else []


def build_dir() -> Path:
    """The cache folder of everything that changes the binary or its build command: the
    sources, the flags, the compiler, this Python (its ABI and its environment's torch
    headers, whose paths are in the build command) and torch's version. Two virtual
    environments therefore never rebuild each other's kernels."""
    key = hashlib.sha256()
    for source in SOURCES + HEADERS:
        key.update(source.read_bytes())
    key.update(" ".join(cflags()).encode())
    key.update(f"{torch.__version__} {sys.implementation.cache_tag} {sys.version_info[:3]} {platform.machine()}".encode())
    key.update(" ".join(_include_paths()).encode())
    key.update(compiler_version().encode())
    return cache_dir() / f"cpp-{key.hexdigest()[:16]}"


def _include_paths() -> list[str]:
    from torch.utils import cpp_extension

    return cpp_extension.include_paths()


def compiler_version() -> str:
    """``$CXX --version`` (or ``c++``'s), the first line; empty without a compiler."""
    compiler = (os.environ.get("CXX") or "c++").split()[0]
    try:
        done = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return ""
    return f"{compiler}: {(done.stdout.strip().splitlines() or [''])[0]}"


@contextlib.contextmanager
def build_lock(folder: Path) -> Iterator[None]:
    """One build at a time per cache folder, across processes: an exclusive ``flock`` on a
    file beside it, which the system releases when its holder dies, so a crash mid-build
    never blocks the next one. torch's own lock file inside the folder (``lock``, left
    behind by a killed build, on which torch would wait forever) is removed under it."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f"{folder.name}.lock", "a") as handle:
        if fcntl is not None:
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            (folder / "lock").unlink(missing_ok=True)
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(handle, fcntl.LOCK_UN)


@torch.compiler.assume_constant_result  # torch.compile: run while tracing, a constant in the graph
def load() -> bool:
    """Build (once per machine) and load the kernels; False, with one warning, if that fails."""
    global _state
    if _state is not None:  # fast path, also what torch.compile sees
        return _state == "ok"
    with _lock:
        if _state is None:
            _state = "failed"
            try:
                from torch.utils import cpp_extension

                compiler = (os.environ.get("CXX") or "c++").split()[0]
                if shutil.which(compiler) is None:
                    raise RuntimeError(f"no C++ compiler {compiler!r} on PATH (set CXX)")
                if not cpp_extension.is_ninja_available():
                    raise RuntimeError("ninja is not installed (pip install ninja)")
                folder = build_dir()
                with build_lock(folder):
                    _load(cpp_extension, folder)
                _state = "ok"
            except Exception as err:  # no compiler, no ninja, a broken toolchain
                lines = str(err).strip().splitlines() or [""]
                why = next((line for line in lines if "error:" in line), lines[-1]).strip()
                warnings.warn(
                    f"swalp: could not build the C++ quantization kernels ({type(err).__name__}: {why[:300]}); "
                    "using the pure-PyTorch reference instead (same results, slower). "
                    "The build needs a C++ compiler and ninja; a new process tries again",
                    RuntimeWarning,
                    stacklevel=4,  # the caller of swalp.quantize
                )
    return _state == "ok"


def _load(cpp_extension, folder: Path) -> None:
    cpp_extension.load(
        name="swalp_cpp_" + folder.name[4:],
        sources=[str(source) for source in SOURCES],
        extra_cflags=cflags(),
        extra_ldflags=openmp_flags(),
        build_directory=str(folder),
        is_python_module=False,
        verbose=False,
    )


def failed() -> bool:
    """True once a build was tried and failed in this process."""
    return _state == "failed"
