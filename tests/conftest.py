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
