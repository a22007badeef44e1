"""Loads the compiled extension ``lmops_kernels._C`` and says clearly when it is missing.

The package works without it (every op falls back to the plain-torch reference); only the ``cpu``
backend (and the ``cuda`` backend where built) needs it. When it does not load, importing
``lmops_kernels`` warns once (:class:`NativeExtensionWarning`, a ``UserWarning``) with the import error
and the rebuild command, because the fallback is about 100x slower; ``lmops info`` says it too.
"""

from __future__ import annotations

import os
import warnings
from types import ModuleType

#: rebuilds the extension against the installed torch (run in the lmops source checkout)
REBUILD_COMMAND = "pip install torch==2.13.0 && pip install --no-build-isolation -e ."


class NativeExtensionWarning(UserWarning):
    """``lmops_kernels._C`` did not load: every op runs the plain-torch reference, about 100x slower."""


_module: ModuleType | None
_error: str | None
_load_error: str | None = None
try:
    from . import _C as _module  # type: ignore[attr-defined]

    _error = None
except (ImportError, OSError) as exc:  # never built, or built against another torch (undefined symbols)
    _module = None
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
    """True when the compiled extension imported."""
    return _module is not None


def missing_reason() -> str | None:
    """Why the extension is unavailable and how to rebuild it, or None."""
    return _error


def load_error() -> str | None:
    """The import error of the extension (``"ImportError: ..."``), or None when it loaded."""
    return _load_error


def module() -> ModuleType:
    """The extension module; raises ``RuntimeError`` with the reason when it is missing."""
    if _module is None:
        raise RuntimeError(_error)
    return _module


def registered(key: str) -> bool:
    """True when the extension registered its kernels at dispatch key ``key`` (``"CPU"`` or ``"CUDA"``)."""
    if _module is None:
        return False
    return key == "CPU" or (key == "CUDA" and bool(getattr(_module, "with_cuda", False)))


_isa = "auto"


def set_cpu_isa(isa: str) -> None:
    """Instruction set of the native CPU kernels: ``"auto"`` (the best this CPU has), ``"scalar"``,
    ``"avx2"`` or ``"avx512vnni"``. ``ValueError`` for an unknown name or one this CPU lacks.
    ``LMOPS_CPU_ISA`` sets it at import."""
    global _isa
    name = (isa or "auto").strip().lower()
    if _module is not None:
        _module.set_cpu_isa(name)
    elif name not in ("auto", "scalar", "avx2", "avx512vnni"):
        raise ValueError(f"isa: expected one of auto, scalar, avx2, avx512vnni; got {isa!r}")
    _isa = name


def cpu_isa() -> str:
    """Instruction set the CPU kernels were told to use (:func:`set_cpu_isa`): auto|scalar|avx2|avx512vnni."""
    return _isa


if os.environ.get("LMOPS_CPU_ISA"):
    set_cpu_isa(os.environ["LMOPS_CPU_ISA"])


def cpu_features() -> dict[str, object]:
    """CPU features the native kernels detected (empty when the extension is missing)."""
    return dict(_module.cpu_features()) if _module is not None else {}
