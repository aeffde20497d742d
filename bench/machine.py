"""What machine a benchmark ran on, for its JSON output."""
import os
import platform
from pathlib import Path


def machine() -> dict:
    """{"cores", "cpu" (model name), "python"}."""
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cores": os.cpu_count(), "cpu": cpu, "python": platform.python_version()}
