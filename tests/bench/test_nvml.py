"""``lmops.bench.nvml``: the GPU energy meter, checked against a stand-in NVML module (no GPU here).

The stand-in counts millijoules like the real ``nvmlDeviceGetTotalEnergyConsumption``; the meter
must report the difference in joules, synchronize the device around the region, and say why it
cannot measure when NVML or the GPU is missing.
"""

from __future__ import annotations

import sys
import types

import pytest
import torch

from lmops.bench import nvml


class _FakeNvml(types.ModuleType):
    def __init__(self, readings_mj):
        super().__init__("pynvml")
        self.readings = list(readings_mj)
        self.handles = []

    def nvmlInit(self):
        pass

    def nvmlDeviceGetHandleByIndex(self, index):
        self.handles.append(index)
        return ("handle", index)

    def nvmlDeviceGetTotalEnergyConsumption(self, handle):
        return self.readings.pop(0)


@pytest.fixture
def fake_gpu(monkeypatch):
    syncs = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: syncs.append(1))
    return syncs


def test_meter_reports_joules_between_reads(monkeypatch, fake_gpu):
    # one probe read in unavailable(), then start and stop
    fake = _FakeNvml([1_000, 5_250_125, 5_262_625])
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    meter = nvml.EnergyMeter()
    with meter:
        pass
    assert meter.joules == pytest.approx(12.5)
    assert fake.handles and set(fake.handles) == {1}
    assert len(fake_gpu) == 2  # synchronized before both reads


def test_meter_explicit_device_and_stop_without_start(monkeypatch, fake_gpu):
    monkeypatch.setitem(sys.modules, "pynvml", _FakeNvml([7, 7]))
    meter = nvml.EnergyMeter(device_index=0)
    with pytest.raises(RuntimeError, match="start"):
        meter.stop()
    with pytest.raises(ValueError, match="device_index"):
        nvml.EnergyMeter(device_index=-1)


def test_unavailable_reasons(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert nvml.unavailable() == "no CUDA device"
    with pytest.raises(RuntimeError, match="EnergyMeter: no CUDA device"):
        nvml.EnergyMeter()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import fails
    assert "nvidia-ml-py" in nvml.unavailable()

    broken = _FakeNvml([])

    def no_counter(handle):
        raise RuntimeError("NVMLError_NotSupported")

    broken.nvmlDeviceGetTotalEnergyConsumption = no_counter
    monkeypatch.setitem(sys.modules, "pynvml", broken)
    assert "not readable" in nvml.unavailable()
