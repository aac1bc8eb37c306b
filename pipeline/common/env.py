"""What the code runs on: library versions, PIL backend, CPU, CUDA.

Pillow-SIMD installs under the ``PIL`` name like Pillow, so the backend is
told apart by the installed distribution (``pillow-simd``), not the import.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import platform
import sys

logger = logging.getLogger(__name__)


def pil_backend() -> dict:
    """Which PIL is active and whether its JPEG codec is libjpeg-turbo."""
    import PIL
    from PIL import features

    simd = False
    try:
        importlib.metadata.distribution("pillow-simd")
        simd = True
    except importlib.metadata.PackageNotFoundError:
        pass
    return {
        "pil_version": PIL.__version__,
        "pillow_simd": simd,
        "libjpeg_turbo": bool(features.check_feature("libjpeg_turbo")),
        "jpeg_version": features.version("jpg"),
    }


def _cpuinfo() -> str:
    """/proc/cpuinfo's text, or "" off Linux."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            return fh.read()
    except OSError:
        return ""


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else platform's."""
    for line in _cpuinfo().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def cpu_has_fast_bf16() -> bool:
    """bf16 matmuls run natively (AVX512-BF16 or AMX); elsewhere they are emulated and slower."""
    flags = _cpuinfo()
    return "avx512_bf16" in flags or "amx_bf16" in flags


def cpu_count() -> int:
    """CPUs this process may use (respects affinity masks and cgroups' cpusets)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def default_workers() -> int:
    """DataLoader workers per process: the cores shared by this node's processes.

    Under torchrun each of LOCAL_WORLD_SIZE ranks gets cpu_count() /
    LOCAL_WORLD_SIZE (8 GPUs on a 16-core node: 2 each, not 16 each); a
    plain run gets every core. At least 1.
    """
    try:
        local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        local = 1
    return max(1, cpu_count() // local)


def environment(with_torch: bool = True) -> dict:
    """Everything a benchmark figure or a manifest should be traced to."""
    import h5py
    import numpy as np

    info = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "numpy": np.__version__,
        "h5py": h5py.__version__,
        "hdf5": h5py.version.hdf5_version,
        "cpu_model": cpu_model(),
        "cpu_count": cpu_count(),
        **pil_backend(),
    }
    if with_torch:
        import torch

        info["torch"] = torch.__version__
        info["cuda_devices"] = [
            torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())
        ] if torch.cuda.is_available() else []
    return info
