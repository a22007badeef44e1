"""Fixtures shared by the test packages. The tiny-model builders live in ``tiny_models.py``, imported by
name (this directory is put on ``sys.path`` so that works under any pytest import mode and in spawned
workers)."""

import sys
from pathlib import Path

import pytest
import torch

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)


@pytest.fixture
def one_thread():
    """Tiny models run fastest and most repeatably on one thread (and the CI box has 2 cores); model-level
    test modules use it for every test (``pytestmark = pytest.mark.usefixtures("one_thread")``)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _restore_backend_choice():
    """A test may force a backend or a CPU ISA (``dispatch.force``, ``_native.set_cpu_isa``): every test
    starts from the choice the process started with (``LMOPS_BACKEND`` / ``LMOPS_CPU_ISA``)."""
    from lmops_kernels import _native, dispatch

    backend, isa = dispatch.forced_backend(), _native.cpu_isa()
    yield
    if dispatch.forced_backend() != backend:
        dispatch.force(backend)
    if _native.cpu_isa() != isa:
        _native.set_cpu_isa(isa)


def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true", default=False,
                     help="also run the tests marked slow (minutes each; the default run keeps one fast "
                          "end-to-end path per method). LMOPS_RUN_SLOW=1 does the same.")


def pytest_collection_modifyitems(config, items):
    import os

    if config.getoption("--run-slow") or os.environ.get("LMOPS_RUN_SLOW") == "1" or config.getoption("-m"):
        return  # asked for, or a -m expression chooses the tests itself
    skip = pytest.mark.skip(reason="slow: run with --run-slow (or LMOPS_RUN_SLOW=1)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
