"""Measured GPU energy: NVML's total-energy counter around a region of work.

``nvmlDeviceGetTotalEnergyConsumption`` (millijoules since the driver loaded, Volta and later) is
read before and after the region, after a device synchronize on both sides so the GPU's work, not
the host's queueing, falls inside. Needs ``nvidia-ml-py`` (``pip install 'lmops[gpu]'``); where it,
the driver or the permission is missing, :func:`unavailable` says why and the meter is not usable.

    meter = EnergyMeter()            # the current CUDA device
    with meter:
        run_decode()
    print(meter.joules)
"""

from __future__ import annotations

from types import ModuleType

import torch

__all__ = ["EnergyMeter", "unavailable"]


def _nvml() -> ModuleType:
    import pynvml  # nvidia-ml-py

    pynvml.nvmlInit()
    return pynvml


def unavailable(device_index: int | None = None) -> str | None:
    """None when NVML can measure the energy of CUDA device ``device_index`` (default: current), else why not."""
    if not torch.cuda.is_available():
        return "no CUDA device"
    index = _index(device_index)
    try:
        nvml = _nvml()
    except ImportError:
        return "pynvml is not installed (pip install 'lmops[gpu]' or nvidia-ml-py)"
    except Exception as exc:  # noqa: BLE001  (NVMLError_*: no driver library, no permission)
        return f"NVML failed to initialise: {exc}"
    try:
        handle = nvml.nvmlDeviceGetHandleByIndex(index)
        nvml.nvmlDeviceGetTotalEnergyConsumption(handle)
    except Exception as exc:  # noqa: BLE001  (NVMLError_NotSupported on pre-Volta GPUs)
        return f"the total-energy counter is not readable: {exc}"
    return None


def _index(device_index: int | None) -> int:
    if device_index is None:
        return torch.cuda.current_device()
    if not isinstance(device_index, int) or device_index < 0:
        raise ValueError(f"device_index: expected a non-negative int or None, got {device_index!r}")
    return device_index


class EnergyMeter:
    """Joules one NVIDIA GPU consumed inside a ``with`` block (or between :meth:`start` and :meth:`stop`).

    Args:
        device_index: CUDA device index (default: the current device). NVML enumerates devices in
            PCI order; set ``CUDA_DEVICE_ORDER=PCI_BUS_ID`` when several GPUs are visible.
    Raises:
        RuntimeError: when NVML cannot measure (the message says why).
    """

    def __init__(self, device_index: int | None = None) -> None:
        reason = unavailable(device_index)
        if reason is not None:
            raise RuntimeError(f"EnergyMeter: {reason}")
        self._nvml = _nvml()
        self._handle = self._nvml.nvmlDeviceGetHandleByIndex(_index(device_index))
        self._start_mj: int | None = None
        self.joules: float | None = None

    def _read_mj(self) -> int:
        torch.cuda.synchronize()
        return int(self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle))

    def start(self) -> None:
        self.joules = None
        self._start_mj = self._read_mj()

    def stop(self) -> float:
        """Ends the region; returns (and keeps in ``joules``) the energy in joules."""
        if self._start_mj is None:
            raise RuntimeError("EnergyMeter.stop: start() was not called")
        self.joules = (self._read_mj() - self._start_mj) / 1e3
        self._start_mj = None
        return self.joules

    def __enter__(self) -> "EnergyMeter":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
