"""Which kernel serves an lmops op: the dispatcher's keys, one table of backends per op, and
``LMOPS_BACKEND``.

Every op is one ``torch.ops.lmops`` operator, and torch's dispatcher picks its kernel by the inputs'
device (pattern after torchao and torchvision: native kernels registered in C++ at their keys):

- ``CPU`` key: the native C++ kernels (``csrc/cpu``), where the extension is built;
- ``CUDA`` key: the native CUDA kernels (``csrc/cuda``), where the extension is built with CUDA;
- ``Autograd`` key: the autograd of ``ternary_linear`` and ``mole_gate``, in C++ (``csrc/autograd.cpp``);
- every other device, and every op or device without a native kernel: one Python kernel per op
  (:func:`route`, registered by :mod:`lmops_kernels.ops` at ``CompositeExplicitAutograd``) that calls
  the first available backend of this module's table in the order ``cuda > triton > cpu > reference``.

So a call costs one dispatcher lookup, and on CPU and CUDA tensors no Python at all past the public
wrapper's validation.

``LMOPS_BACKEND=reference|cpu|triton|cuda`` (read at import; :func:`force` and :func:`forced` change it
at run time) forces one backend for every op that has an implementation for it: :func:`force`
registers :func:`route` on top of the native kernels at the ``CPU`` and ``CUDA`` keys (torch keeps the
native kernel underneath and restores it when the override is removed), and :func:`route` then either
runs the forced backend or raises: a forced backend that cannot serve a call is an error, never a
silent fallback. Ops whose only implementation is the reference (layout conversions, weight
quantization) use it whatever is forced: there is nothing to choose.

Each implementation of an op that reads packed ternary weights lists the packed layouts it reads
(:mod:`lmops_kernels.layouts`), the one it reads best first; :func:`preferred_layout` tells a layer
which layout to keep its weights in.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch

from . import layouts as layouts_mod

BACKENDS: tuple[str, ...] = ("cuda", "triton", "cpu", "reference")
ENV_VAR = "LMOPS_BACKEND"

# Native backends: the dispatch key their C++ kernels are registered at.
NATIVE_KEYS: dict[str, str] = {"cpu": "CPU", "cuda": "CUDA"}


@dataclass(frozen=True)
class Implementation:
    """One backend's implementation of one op.

    ``fn``: the Python function (None for a native kernel, which the dispatcher calls itself).
    ``devices``: device types it can run on when forced; ``auto_devices``: those where the automatic
    choice may pick it (Triton runs on CPU tensors only under its interpreter, and only when forced).
    ``unavailable``: returns None when usable, else the reason. ``layouts``: the packed weight
    layouts it reads (ops that take packed weights), the one it reads best first.
    """

    backend: str
    fn: Callable | None
    devices: frozenset[str]
    auto_devices: frozenset[str]
    unavailable: Callable[[str], str | None] = field(default=lambda device: None)
    layouts: tuple[str, ...] = (layouts_mod.CANONICAL,)


_TABLE: dict[str, dict[str, Implementation]] = {}
_AUTO_CACHE: dict[tuple[str, str], Implementation] = {}
_forced: str | None = None
_override: torch.library.Library | None = None


def register(
    op: str,
    backend: str,
    devices: tuple[str, ...],
    *,
    auto_devices: tuple[str, ...] | None = None,
    unavailable: Callable[[str], str | None] | None = None,
    layouts: tuple[str, ...] = (layouts_mod.CANONICAL,),
) -> Callable[[Callable | None], Callable | None]:
    """Decorator: register ``fn`` as ``backend``'s implementation of ``op`` (``fn=None``: the native kernel
    registered in C++ at ``NATIVE_KEYS[backend]``).

    ``layouts``: for ops taking packed weights, the layouts ``fn`` reads, best first; ``fn`` is then
    always called with a ``layout=<one of them>`` keyword (:func:`route` converts other layouts).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend: expected one of {BACKENDS}, got {backend!r}")
    layouts = tuple(layouts)
    if not layouts:
        raise ValueError("layouts: expected at least one layout name, got ()")
    for name in layouts:
        layouts_mod.check_layout(name, "layouts")

    def deco(fn: Callable | None) -> Callable | None:
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


def _parse(value: str | None, source: str) -> str | None:
    value = (value or "").strip().lower()
    if not value or value == "auto":
        return None
    if value not in BACKENDS:
        raise ValueError(f"{source}: expected one of {', '.join(BACKENDS)} or auto, got {value!r}")
    return value


def forced_backend() -> str | None:
    """The backend forced now (``LMOPS_BACKEND`` at import, or :func:`force`), or None."""
    return _forced


def select(op: str, device_type: str) -> Implementation:
    """The implementation of ``op`` for tensors on ``device_type`` under the current rule."""
    impls = _TABLE.get(op)
    if not impls:
        raise KeyError(f"no backend registered for op {op!r}")
    forced = _forced
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


def route(op: str) -> Callable:
    """The Python kernel of ``op``: calls the implementation :func:`select` picks for the first tensor
    argument's device, with packed weights converted to a layout it reads (a copy per call; layers
    keep their weights in :func:`preferred_layout`)."""
    takes_layout = op in ("ternary_matmul_int", "ternary_linear")
    defaults: list = []

    def kernel(*args):
        if not defaults:
            schema = getattr(torch.ops.lmops, op).default._schema
            defaults.extend(a.default_value if a.has_default_value() else None for a in schema.arguments)
        if len(args) < len(defaults):  # the dispatcher leaves out trailing arguments equal to their defaults
            args = (*args, *defaults[len(args):])
        impl = select(op, args[0].device.type)
        if impl.fn is None:  # a native kernel: only reachable when its key has no C++ kernel registered
            raise RuntimeError(f"op {op!r}: the {impl.backend} backend's native kernel is not registered")
        if not takes_layout:
            return impl.fn(*args)
        *head, layout = args
        if layout not in impl.layouts:
            packed = layouts_mod.convert(head[1], layout, impl.layouts[0])
            head[1], layout = packed, impl.layouts[0]
        return impl.fn(*head, layout=layout)

    kernel.__name__ = f"{op}_route"
    return kernel


def _native_ops(key: str) -> list[str]:
    backend = {v: k for k, v in NATIVE_KEYS.items()}[key]
    return [op for op, impls in _TABLE.items() if backend in impls and impls[backend].fn is None]


def force(backend: str | None) -> None:
    """Force ``backend`` (a name in :data:`BACKENDS`) for every op that has it; None or ``"auto"``
    restores the automatic choice. Changes what ``LMOPS_BACKEND`` set at import."""
    global _forced, _override
    name = _parse(backend, "backend")
    if _override is not None:
        _override._destroy()
        _override = None
    _forced = name
    _AUTO_CACHE.clear()
    if name is None:
        return
    from . import _native

    lib = None
    for backend_name, key in NATIVE_KEYS.items():
        if backend_name == name or not _native.registered(key):
            continue  # the native kernel at this key is the forced backend, or none is registered there
        for op in _native_ops(key):
            if lib is None:
                lib = torch.library.Library("lmops", "IMPL")
            with warnings.catch_warnings():  # torch's one-time note that a kernel is being overridden
                warnings.filterwarnings("ignore", message="(?s).*Overriding a previously registered kernel")
                lib.impl(op, route(op), key)
    _override = lib


@contextlib.contextmanager
def forced(backend: str | None) -> Iterator[None]:
    """``with forced("reference"): ...``: :func:`force` for the block, then the previous choice again."""
    before = _forced
    force(backend)
    try:
        yield
    finally:
        force(before)


def force_from_environment() -> None:
    """Apply ``LMOPS_BACKEND`` (called once at import; raises ``ValueError`` naming it when invalid)."""
    force(_parse(os.environ.get(ENV_VAR), ENV_VAR))


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
