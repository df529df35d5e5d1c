"""What every benchmark records about where it ran: the device slug for file names, and the machine.

``device_slug()`` names results files (``*_<device>.md``): the GPU's model for NVIDIA parts
("NVIDIA H100 80GB HBM3" -> ``h100``), the kind's words joined by ``_`` otherwise ("TPU v5 lite" ->
``tpu_v5_lite``, "cpu" -> ``cpu``). ``describe()`` is the one-line machine description (device, host
CPU, cores, jax version, load average) a results file states.
"""

from __future__ import annotations

import os
import platform
import re

import jax

_GPU_MODEL = re.compile(r"^[a-z]{1,2}\d{1,4}[a-z]?$")  # h100, h200, a100, l4, l40s, b200, gb200


def slugify(kind: str) -> str:
    """File-name slug of a device kind: an NVIDIA model token, else the kind's words joined by _."""
    words = re.findall(r"[a-z0-9]+", kind.lower())
    if words and words[0] == "nvidia":
        model = next((w for w in words[1:] if _GPU_MODEL.match(w)), None)
        return model or "_".join(words[1:]) or "gpu"
    return "_".join(words) or "unknown"


def device_slug() -> str:
    """Slug of the default device's kind (``jax.devices()[0].device_kind``), e.g. ``h100``, ``cpu``."""
    return slugify(jax.devices()[0].device_kind)


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages, rounded (machine load while a benchmark runs)."""
    return [round(v, 2) for v in os.getloadavg()]


def scheduler() -> str:
    """This process's scheduling policy: "SCHED_OTHER", or e.g. "SCHED_FIFO" under ``chrt -f``.

    A real-time policy keeps a shared machine's other processes off the cores while timing (they
    still get the kernel's 5% real-time throttle), which a results file should say.
    """
    names = {getattr(os, n): n for n in ("SCHED_OTHER", "SCHED_FIFO", "SCHED_RR", "SCHED_BATCH")}
    try:
        return names.get(os.sched_getscheduler(0), "unknown")
    except (AttributeError, OSError):  # not Linux
        return "unknown"


def host_memory() -> str:
    """How host memory is paged: the kernel's transparent-huge-page mode and ``GLIBC_TUNABLES``.

    On CPU, ``GLIBC_TUNABLES=glibc.malloc.hugetlb=1`` (with THP in ``madvise`` or ``always`` mode)
    backs XLA's per-step buffers with 2 MiB pages; large-activation steps then spend far less time in
    page faults (``docs/kernels.md``), so a results file says which way it ran.
    """
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            thp = re.search(r"\[(\w+)\]", f.read())
        mode = thp.group(1) if thp else "unknown"
    except OSError:
        mode = "unknown"
    return f"THP {mode}, GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES', '') or '(unset)'}"


def describe() -> dict:
    """Device kind and platform, host CPU, cores, jax version, scheduling policy, load average and
    host memory paging (``host_memory``)."""
    device = jax.devices()[0]
    return {
        "device": f"{device.platform}: {device.device_kind}",
        "device_slug": slugify(device.device_kind),
        "host": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "jax": jax.__version__,
        "scheduler": scheduler(),
        "loadavg": load_average(),
        "memory": host_memory(),
    }


def summary() -> str:
    """``describe()`` as one line, for results files and shell scripts."""
    d = describe()
    return (
        f"{d['device']}, {d['host']}, {d['cpu_count']} CPUs, jax {d['jax']}, "
        f"{d['scheduler']}, load average {d['loadavg']}, {d['memory']}"
    )


if __name__ == "__main__":  # python benchmarks/machine.py [--slug]: what shell scripts need
    import sys

    print(device_slug() if "--slug" in sys.argv[1:] else summary())
