"""Every backend, one module each; importing this package registers them all with the dispatcher.

- :mod:`.reference`: plain torch, every op, every device (the fallback).
- :mod:`.cpu`: the native C++ kernels (``csrc/cpu``) on CPU tensors.
- :mod:`.cuda`: the native CUDA kernels (``csrc/cuda``) on CUDA tensors of sm_80+ GPUs.
- :mod:`.triton`: Triton kernels on CUDA tensors (and CPU tensors under ``TRITON_INTERPRET=1``).
"""

from . import cpu, cuda, reference, triton  # noqa: F401  (registration happens on import)
