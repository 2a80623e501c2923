"""Where the numbers of an experiment came from. Not public."""

from __future__ import annotations

import os
import platform

import torch


def machine() -> dict:
    """CPU model (Linux), cores, platform, torch, and the GPU if one is in use."""
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return dict(cpu=cpu, cores=os.cpu_count(), platform=platform.platform(), torch=torch.__version__)
