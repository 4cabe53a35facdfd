"""What every benchmark prints about the machine it ran on, and when its ratios cannot be trusted.

A speed ratio measured while other work shares the cores is not a ratio anyone can use: the two
sides suffer unequally (PyTorch's OpenMP threads spin and lose more to oversubscription than XLA's
pool). Every script in ``benchmarks/`` (but ``bench_gpu.py``) therefore

- prints one line about the machine (:func:`machine_line`: CPU model, cores, the ISA extensions
  that decide which kernels run: AVX2, AVX-512, AVX512-BF16/FP16, AMX; jax / torch versions and
  ``XLA_FLAGS``);
- wraps its run in a :class:`LoadWatch`, which reads the 1-minute load average before and after and
  the CPU time that *other* processes took while it ran (``/proc/stat`` minus this process's own
  CPU time), and formats every ratio through :meth:`LoadWatch.ratio`, which appends
  ``UNRELIABLE`` when the machine was shared;
- times the sides it compares in turn (:func:`interleaved`: warm-up, then repeats alternating
  between the sides, medians), so both see the same machine.

The load average after a run includes the benchmark's own threads (up to the core count, more
while OpenMP threads spin), so it alone cannot tell a shared machine from a busy benchmark; the
verdict uses the load *before* the run and the other processes' share of the cores *during* it.
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

# ISA extensions that change which CPU kernels XLA / oneDNN pick.
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16",
             "amx_int8")
# Other processes may take at most this fraction of the cores' time while a ratio is measured.
MAX_OTHERS_SHARE = 0.10


def _cpuinfo() -> dict[str, str]:
    """The first processor's ``/proc/cpuinfo`` fields ({} where there is no such file)."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    break
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
    except OSError:
        pass
    return fields


def num_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def machine_line() -> str:
    """One line: CPU model, cores, the ISA flags of :data:`ISA_FLAGS` it has, versions, XLA_FLAGS."""
    info = _cpuinfo()
    flags = set(info.get("flags", "").split())
    have = [flag for flag in ISA_FLAGS if flag in flags] or ["(no /proc/cpuinfo flags)"]
    versions = []
    for name in ("jax", "jaxlib", "torch"):
        module = sys.modules.get(name)
        if module is not None:
            versions.append(f"{name} {getattr(module, '__version__', '?')}")
    return (f"machine: {info.get('model name', platform.processor() or platform.machine())}, {num_cores()} cores, "
            f"ISA {' '.join(have)}; {', '.join(versions)}; XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")


def load_1min() -> float:
    return os.getloadavg()[0]


def _busy_seconds() -> tuple[float, float]:
    """(CPU seconds all processes have used since boot, CPU seconds this process has used)."""
    own = os.times()
    own_seconds = own.user + own.system
    try:
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:]]
    except OSError:
        return float("nan"), own_seconds
    # user nice system idle iowait irq softirq steal ...: all but idle and iowait is work (steal is
    # a neighbouring VM's work on our cores).
    busy = sum(values) - values[3] - (values[4] if len(values) > 4 else 0)
    return busy / os.sysconf("SC_CLK_TCK"), own_seconds


class LoadWatch:
    """Watches the machine while a benchmark runs; see the module docstring.

    ``LoadWatch()`` prints the machine line and the load before; :meth:`ratio` formats a ratio
    (marked ``UNRELIABLE`` when the machine is shared so far); :meth:`close` prints the load after
    and the verdict. Also a context manager.
    """

    def __init__(self, stream: TextIO = sys.stdout):
        self.stream = stream
        self.cores = num_cores()
        self.load_before = load_1min()
        self._start = time.monotonic()
        self._busy_start, self._own_start = _busy_seconds()
        print(machine_line(), file=stream)
        print(f"load average (1 min) before: {self.load_before:.2f} on {self.cores} cores", file=stream, flush=True)

    def others_share(self) -> float:
        """Fraction of the cores' time that other processes used since this watch began."""
        busy, own = _busy_seconds()
        elapsed = max(time.monotonic() - self._start, 1e-9)
        return max(0.0, (busy - self._busy_start) - (own - self._own_start)) / (elapsed * self.cores)

    def reasons(self) -> list[str]:
        """Why the numbers so far are unreliable ([] when they are not)."""
        reasons = []
        if self.load_before > self.cores:
            reasons.append(f"load before {self.load_before:.2f} > {self.cores} cores")
        share = self.others_share()
        if share > MAX_OTHERS_SHARE:
            reasons.append(f"other processes took {share:.0%} of the cores")
        return reasons

    def ratio(self, value: float, fmt: str = "{:.2f}x") -> str:
        """``value`` formatted, with `` UNRELIABLE`` appended when the machine was shared."""
        text = fmt.format(value)
        return f"{text} UNRELIABLE" if self.reasons() else text

    def close(self) -> None:
        reasons = self.reasons()
        verdict = ("UNRELIABLE ratios: " + "; ".join(reasons) + " (measured under load)") if reasons else \
            "the machine was not shared: ratios usable"
        print(f"load average (1 min): before {self.load_before:.2f}, after {load_1min():.2f} (includes this "
              f"benchmark's threads); other processes' share of the {self.cores} cores during the run "
              f"{self.others_share():.0%}; {verdict}", file=self.stream, flush=True)

    def __enter__(self) -> LoadWatch:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def interleaved(runners: dict[str, Callable[[], Any]], repeats: int, warmup: int = 2) -> dict[str, dict]:
    """Time several synchronised callables in turn: ``{name: {"first_s", "times", "step_s"}}``.

    Each runner gets one first call (compile; ``first_s``) and ``warmup`` untimed calls, then
    ``repeats`` timed calls alternate between the runners, so that a busy machine slows them
    alike; ``step_s`` is the median. Each runner must block until its work is done.
    """
    results: dict[str, dict] = {}
    for name, run in runners.items():
        start = time.perf_counter()
        run()
        results[name] = {"first_s": time.perf_counter() - start, "times": []}
        for _ in range(warmup):
            run()
    for _ in range(repeats):
        for name, run in runners.items():
            start = time.perf_counter()
            run()
            results[name]["times"].append(time.perf_counter() - start)
    for result in results.values():
        result["step_s"] = statistics.median(result["times"])
    return results
