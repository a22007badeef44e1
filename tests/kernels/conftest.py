"""Shared fixtures of the kernel tests: the CPU implementations to compare with the reference.

Every (backend, ISA) pair this machine can run is one parameter of ``cpu_impl``: the plain-torch
reference, and the native ``cpu`` backend under each instruction set of ``LMOPS_CPU_ISA``. An ISA
the CPU lacks is skipped with that reason; a missing native extension skips the native cases with
the loader's message.
"""

from __future__ import annotations

import pytest
from lmops_kernels import dispatch

from lmops_kernels import _native

NATIVE_ISAS = ("scalar", "avx2", "avx512vnni")


def _native_skip(isa: str) -> str | None:
    if not _native.available():
        return f"native extension missing: {_native.missing_reason()}"
    if isa != "scalar" and not _native.cpu_features().get(isa, False):
        return f"this CPU does not support {isa} (cpu_features: {_native.cpu_features()})"
    return None


def _impl_params():
    params = [pytest.param(("reference", None), id="reference")]
    for isa in NATIVE_ISAS:
        reason = _native_skip(isa)
        marks = [pytest.mark.skip(reason=reason)] if reason else []
        params.append(pytest.param(("cpu", isa), id=f"cpu-{isa}", marks=marks))
    return params


@pytest.fixture(params=_impl_params())
def cpu_impl(request, monkeypatch):
    """Forces one backend (and native ISA) for the test through LMOPS_BACKEND / LMOPS_CPU_ISA.

    Returns ``(backend, isa)``; ``isa`` is None for the reference.
    """
    backend, isa = request.param
    dispatch.force(backend)
    if isa is None:
        _native.set_cpu_isa("auto")
    else:
        _native.set_cpu_isa(isa)
    return backend, isa


@pytest.fixture
def native_required():
    if not _native.available():
        pytest.skip(f"native extension missing: {_native.missing_reason()}")


@pytest.fixture
def use_backend(monkeypatch):
    """``use_backend("reference")`` forces a backend for the rest of the test (None: automatic)."""

    def set_backend(name: str | None, isa: str | None = None) -> None:
        if name is None:
            dispatch.force(None)
        else:
            dispatch.force(name)
        if isa is None:
            _native.set_cpu_isa("auto")
        else:
            _native.set_cpu_isa(isa)

    return set_backend
