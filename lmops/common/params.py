"""Freezing a model's parameters for an adapter method, and giving the flags back when it is removed.

Every method that trains only its own parameters (ResLoRA, MoLE) freezes the model on apply and, on
unload, restores each parameter's ``requires_grad`` as it was: :func:`freeze` returns the flags,
:func:`restore_requires_grad` puts them back.
"""

from __future__ import annotations

from typing import Iterable, Mapping

from torch import nn

__all__ = ["freeze", "restore_requires_grad"]


def _check_model(model: object) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")


def freeze(model: nn.Module, keep: Iterable[nn.Parameter] = ()) -> dict[str, bool]:
    """Set ``requires_grad=False`` on every parameter of ``model`` but those in ``keep`` (left as they
    are), and return every parameter's flag from before: ``{name: requires_grad}``, keyed by
    ``named_parameters()`` names (a tied parameter once, under its first name).

    The flags are keyed by name, not by object, so that :func:`restore_requires_grad` also reaches a
    parameter that was replaced under the same name meanwhile (a merge that writes a new weight).
    """
    _check_model(model)
    kept = {id(p) for p in keep}
    saved = {}
    for name, p in model.named_parameters():
        saved[name] = p.requires_grad
        if id(p) not in kept:
            p.requires_grad_(False)
    return saved


def restore_requires_grad(model: nn.Module, saved: Mapping[str, bool]) -> None:
    """Give each parameter of ``model`` named in ``saved`` (as returned by :func:`freeze`) its flag
    back. Parameters not in ``saved`` (added since, e.g. an adapter's) are left as they are; names in
    ``saved`` that ``model`` no longer has are ignored."""
    _check_model(model)
    if not isinstance(saved, Mapping):
        raise TypeError(f"saved: expected the {{name: requires_grad}} mapping freeze() returned, got {type(saved).__name__}")
    for name, p in model.named_parameters():
        if name in saved:
            p.requires_grad_(bool(saved[name]))
