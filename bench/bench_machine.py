"""What every benchmark shares: the machine it ran on, printed first, and its `--help` line."""

from __future__ import annotations

import os
import platform
from typing import Any

import numpy as np
import onnxruntime


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Model", "Hardware"):
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(**extra: Any) -> dict[str, Any]:
    """CPU, cores, load and library versions, plus what the caller adds."""
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": affinity,
        "loadavg_1min": os.getloadavg()[0],
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
        "numpy": np.__version__,
        **extra,
    }


def help_line(doc: str | None) -> str | None:
    """A bench's `--help` description: the first paragraph of its docstring, as one line."""
    return " ".join(doc.split("\n\n")[0].split()) if doc else None
