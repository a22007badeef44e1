"""One backend table per op, and the rule that picks a backend for a call.

Order: ``cuda > triton > cpu > reference``, restricted to backends that serve the input's device and
are available. ``LMOPS_BACKEND=reference|cpu|triton|cuda`` forces one backend for every op that has
an implementation for it; a forced backend that cannot serve the call is an error, never a silent
fallback. Ops whose only implementation is the reference (layout conversions, weight quantization)
use it whatever is forced: there is nothing to choose.

Each implementation of an op that reads packed ternary weights lists the packed layouts it reads
(:mod:`lmops_kernels.layouts`), the one it reads best first; :func:`preferred_layout` tells a layer
which layout to keep its weights in.

Pattern after peft's ordered ``dispatch_*`` list, with the default (the reference) last.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable

from . import layouts as layouts_mod

BACKENDS: tuple[str, ...] = ("cuda", "triton", "cpu", "reference")
ENV_VAR = "LMOPS_BACKEND"


@dataclass(frozen=True)
class Implementation:
    """One backend's implementation of one op.

    ``devices``: device types it can run on when forced; ``auto_devices``: those where the automatic
    choice may pick it (Triton runs on CPU tensors only under its interpreter, and only when forced).
    ``unavailable``: returns None when usable, else the reason. ``layouts``: the packed weight
    layouts it reads (ops that take packed weights), the one it reads best first.
    """

    backend: str
    fn: Callable
    devices: frozenset[str]
    auto_devices: frozenset[str]
    unavailable: Callable[[str], str | None] = field(default=lambda device: None)
    layouts: tuple[str, ...] = (layouts_mod.CANONICAL,)


_TABLE: dict[str, dict[str, Implementation]] = {}
_AUTO_CACHE: dict[tuple[str, str], Implementation] = {}


def register(
    op: str,
    backend: str,
    devices: tuple[str, ...],
    *,
    auto_devices: tuple[str, ...] | None = None,
    unavailable: Callable[[str], str | None] | None = None,
    layouts: tuple[str, ...] = (layouts_mod.CANONICAL,),
) -> Callable[[Callable], Callable]:
    """Decorator: register ``fn`` as ``backend``'s implementation of ``op``.

    ``layouts``: for ops taking packed weights, the layouts ``fn`` reads, best first; ``fn`` is
    then always called with a ``layout=<one of them>`` keyword (the op converts other layouts).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend: expected one of {BACKENDS}, got {backend!r}")
    layouts = tuple(layouts)
    if not layouts:
        raise ValueError("layouts: expected at least one layout name, got ()")
    for name in layouts:
        layouts_mod.check_layout(name, "layouts")

    def deco(fn: Callable) -> Callable:
        _TABLE.setdefault(op, {})[backend] = Implementation(
            backend,
            fn,
            frozenset(devices),
            frozenset(devices if auto_devices is None else auto_devices),
            unavailable or (lambda device: None),
            layouts,
        )
        _AUTO_CACHE.clear()
        return fn

    return deco


def forced_backend() -> str | None:
    """The backend forced by ``LMOPS_BACKEND``, or None. Raises ``ValueError`` on an unknown name."""
    value = os.environ.get(ENV_VAR, "").strip().lower()
    if not value or value == "auto":
        return None
    if value not in BACKENDS:
        raise ValueError(f"{ENV_VAR}: expected one of {', '.join(BACKENDS)} or auto, got {value!r}")
    return value


def select(op: str, device_type: str) -> Implementation:
    """The implementation of ``op`` for tensors on ``device_type`` under the current rule."""
    impls = _TABLE.get(op)
    if not impls:
        raise KeyError(f"no backend registered for op {op!r}")
    forced = forced_backend()
    if forced is not None and not (len(impls) == 1 and "reference" in impls):
        impl = impls.get(forced)
        if impl is None:
            raise RuntimeError(
                f"{ENV_VAR}={forced}: op {op!r} has no {forced} backend (it has: {', '.join(impls)})"
            )
        if device_type not in impl.devices:
            raise RuntimeError(
                f"{ENV_VAR}={forced}: the {forced} backend of {op!r} cannot run on {device_type} tensors "
                f"(it runs on: {', '.join(sorted(impl.devices))})"
            )
        reason = impl.unavailable(device_type)
        if reason is not None:
            raise RuntimeError(f"{ENV_VAR}={forced}: the {forced} backend of {op!r} is unavailable: {reason}")
        return impl
    key = (op, device_type)
    cached = _AUTO_CACHE.get(key)
    if cached is not None:
        return cached
    for name in BACKENDS:
        impl = impls.get(name)
        if impl is not None and device_type in impl.auto_devices and impl.unavailable(device_type) is None:
            _AUTO_CACHE[key] = impl
            return impl
    raise RuntimeError(f"no available backend of {op!r} runs on {device_type} tensors")


def preferred_layout(op: str, device_type: str) -> str:
    """The packed layout that the implementation :func:`select` picks now for ``op`` on
    ``device_type`` tensors reads best (honours ``LMOPS_BACKEND``; raises as :func:`select` does)."""
    return select(op, device_type).layouts[0]


def backends_for(op: str) -> dict[str, str | None]:
    """Every registered backend of ``op`` with None (usable on CPU tensors) or why not."""
    out: dict[str, str | None] = {}
    for name, impl in _TABLE.get(op, {}).items():
        device = "cpu" if "cpu" in impl.devices else sorted(impl.devices)[0]
        out[name] = impl.unavailable(device)
    return out


def ops() -> list[str]:
    """Names of all ops with at least one backend."""
    return sorted(_TABLE)
