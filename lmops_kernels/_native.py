"""Loads the native op library ``lmops_kernels/_C*.so`` and says clearly when it is missing.

The library is plain C++ (no Python header, no Python library: ``csrc/ops.cpp``); loading it with
``torch.ops.load_library`` registers the ``lmops::`` schemas and the native kernels at their dispatch
keys. ``LMOPS_NATIVE_LIBRARY`` names another file to load instead (a library built elsewhere).

The package works without it (every op falls back to the plain-torch reference); only the ``cpu``
backend (and the ``cuda`` backend where built) needs it. When it does not load, importing
``lmops_kernels`` warns once (:class:`NativeExtensionWarning`, a ``UserWarning``) with the load error
and the rebuild command, because the fallback is about 100x slower; ``lmops info`` says it too.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import torch

#: rebuilds the extension against the installed torch (run in the lmops source checkout)
REBUILD_COMMAND = "pip install torch==2.13.0 && pip install --no-build-isolation -e ."
ENV_LIBRARY = "LMOPS_NATIVE_LIBRARY"


class NativeExtensionWarning(UserWarning):
    """``lmops_kernels._C`` did not load: every op runs the plain-torch reference, about 100x slower."""


def _library_path() -> Path:
    override = os.environ.get(ENV_LIBRARY)
    if override:
        return Path(override)
    here = Path(__file__).resolve().parent
    found = sorted(here.glob("_C*.so")) + sorted(here.glob("_C*.pyd"))
    if not found:
        raise FileNotFoundError(f"no native library _C*.so in {here} (the extension was never built)")
    return found[0]


_path: Path | None = None
_error: str | None = None
_load_error: str | None = None
try:
    _path = _library_path()
    torch.ops.load_library(str(_path))
except (OSError, RuntimeError) as exc:  # never built, or built against another torch (undefined symbols)
    _path = None
    _load_error = f"{type(exc).__name__}: {exc}"
    _error = (
        f"the lmops native extension lmops_kernels._C did not load ({_load_error}); rebuild it "
        f"against the installed torch, in the lmops source checkout: `{REBUILD_COMMAND}`"
    )
    warnings.warn(
        f"{_error}. Until then every lmops op runs the plain-torch reference, about 100x slower.",
        NativeExtensionWarning,
        stacklevel=2,
    )


def available() -> bool:
    """True when the native library loaded."""
    return _path is not None


def library_path() -> Path | None:
    """The file of the loaded native library, or None."""
    return _path


def missing_reason() -> str | None:
    """Why the extension is unavailable and how to rebuild it, or None."""
    return _error


def load_error() -> str | None:
    """The load error of the library (``"OSError: ..."``), or None when it loaded."""
    return _load_error


def with_cuda() -> bool:
    """True when the loaded library holds the CUDA kernels."""
    return _path is not None and bool(torch.ops.lmops._with_cuda())


def registered(key: str) -> bool:
    """True when the library registered its kernels at dispatch key ``key`` (``"CPU"`` or ``"CUDA"``)."""
    return _path is not None and (key == "CPU" or (key == "CUDA" and with_cuda()))


_isa = "auto"


def set_cpu_isa(isa: str) -> None:
    """Instruction set of the native CPU kernels: ``"auto"`` (the best this CPU has), ``"scalar"``,
    ``"avx2"`` or ``"avx512vnni"``. ``ValueError`` for an unknown name or one this CPU lacks.
    ``LMOPS_CPU_ISA`` sets it at import."""
    global _isa
    name = (isa or "auto").strip().lower()
    if _path is not None:
        torch.ops.lmops._set_cpu_isa(name)
    elif name not in ("auto", "scalar", "avx2", "avx512vnni"):
        raise ValueError(f"isa: expected one of auto, scalar, avx2, avx512vnni; got {isa!r}")
    _isa = name


def cpu_isa() -> str:
    """Instruction set the CPU kernels were told to use (:func:`set_cpu_isa`): auto|scalar|avx2|avx512vnni."""
    return _isa


def cpu_features() -> dict[str, object]:
    """CPU features the native kernels detected (empty when the library is missing)."""
    return json.loads(torch.ops.lmops._cpu_features()) if _path is not None else {}


if os.environ.get("LMOPS_CPU_ISA"):
    set_cpu_isa(os.environ["LMOPS_CPU_ISA"])
