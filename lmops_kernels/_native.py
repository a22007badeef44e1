"""Loads the compiled extension ``lmops_kernels._C`` and says clearly when it is missing.

The package works without it (every op falls back to the plain-torch reference); only the ``cpu``
backend (and the ``cuda`` backend where built) needs it.
"""

from __future__ import annotations

import os
from types import ModuleType

_module: ModuleType | None
_error: str | None
try:
    from . import _C as _module  # type: ignore[attr-defined]

    _error = None
except ImportError as exc:  # the wheel was built without it, or the source tree was never built
    _module = None
    _error = (
        f"the lmops native extension is not built ({exc}); reinstall with "
        "`pip install torch==2.13.0 && pip install --no-build-isolation lmops` (or `-e .` from a checkout)"
    )


def available() -> bool:
    """True when the compiled extension imported."""
    return _module is not None


def missing_reason() -> str | None:
    """Why the extension is unavailable, or None."""
    return _error


def module() -> ModuleType:
    """The extension module; raises ``RuntimeError`` with the reason when it is missing."""
    if _module is None:
        raise RuntimeError(_error)
    return _module


def cpu_isa() -> str:
    """Instruction set the CPU kernels use: ``LMOPS_CPU_ISA`` (auto|scalar|avx2|avx512vnni), default auto."""
    return os.environ.get("LMOPS_CPU_ISA", "auto")


def cpu_features() -> dict[str, object]:
    """CPU features the native kernels detected (empty when the extension is missing)."""
    return dict(_module.cpu_features()) if _module is not None else {}
