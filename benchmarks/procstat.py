"""CPU seconds of a process, or of each of its threads, from /proc: what the benchmarks'
probes charge to the server, the model process and the client."""

from __future__ import annotations

import os


def cpu_s(pid: int, tid: int | None = None) -> float:
    """User + system CPU seconds of process `pid`, or of its thread `tid`."""
    with open(f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def threads_cpu_s(pid: int) -> dict[int, float]:
    """`cpu_s` of each thread of process `pid`, by thread id."""
    out = {}
    for tid in map(int, os.listdir(f"/proc/{pid}/task")):
        try:
            out[tid] = cpu_s(pid, tid)
        except OSError:  # the thread ended meanwhile
            continue
    return out
