"""What every benchmark records about the machine it ran on (shared by the benchmark scripts)."""

from __future__ import annotations


def cpu_model():
    """The CPU's model name from /proc/cpuinfo, or "unknown" where it cannot be read."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "unknown")
    except OSError:
        return "unknown"
