"""The CPU a command and every process it starts use (Ray's daemons, actors and workers included),
with the share of each kind of process.

Ray starts its processes in their own sessions, and most are never waited for by the command,
so `time` misses them. This runs the command in a fresh cgroup-v1 cpuacct group (root, on a
host that mounts /sys/fs/cgroup/cpuacct): the group's `cpuacct.usage` counts every descendant,
whoever reaps it. Every 0.25 s it also reads each process's utime + stime from /proc and keeps
the last value per process under its kind (the Ray actor class from the process title, or the
program), so a process that lives less than 0.25 s is in the total but not in the table.

Examples:
  python benchmarks/cgroup_cpu.py suite -- python -m pytest -q           # the README's 905 CPU s
  python benchmarks/cgroup_cpu.py pbt -- python -m pytest -q -n 0 tests/integration/test_tune_pbt.py
"""

from __future__ import annotations

import argparse
import collections
import os
import subprocess
import sys
import time
from pathlib import Path

CPUACCT = Path("/sys/fs/cgroup/cpuacct")
KINDS = ("raylet", "gcs_server", "dashboard/agent", "dashboard.py", "runtime_env/agent",
         "log_monitor", "monitor.py", "default_worker", "pytest", "adr_scale", "pip")
TICK = os.sysconf("SC_CLK_TCK")


def kind(pid: str) -> str | None:
    """A process's kind: its Ray title (ray::TrainController, ...) or a known program; None once
    it is gone."""
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:300]
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return None
    if "ray::" in cmd or comm.startswith("ray::"):
        return (cmd.split() or [comm])[0][:60]
    return next((k for k in KINDS if k in cmd), comm)


def sample(group: Path, seen: dict[str, tuple[str, float]]) -> None:
    """Each live process's kind and CPU seconds so far; an idle worker keeps the actor title it
    had (a title comes after the process starts)."""
    for pid in (group / "cgroup.procs").read_text().split():
        try:
            stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        name = kind(pid)
        if pid in seen and name in (None, "default_worker"):
            name = seen[pid][0]
        if name:
            seen[pid] = (name, (int(stat[11]) + int(stat[12])) / TICK)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("\n\n", 2)[2],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", help="the cgroup's name under /sys/fs/cgroup/cpuacct")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command")
    parser.add_argument("--rows", type=int, default=25, help="kinds shown (default 25)")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command; e.g. cgroup_cpu.py suite -- python -m pytest -q")
    if not CPUACCT.is_dir():
        parser.error(f"{CPUACCT} is not mounted (cgroup v1 cpuacct, as root)")
    group = CPUACCT / args.name
    group.mkdir(exist_ok=True)
    (group / "cpuacct.usage").write_text("0")
    start = time.monotonic()
    proc = subprocess.Popen(["bash", "-c", f'echo $$ > {group}/cgroup.procs; exec "$@"', "_",
                             *command])
    seen: dict[str, tuple[str, float]] = {}
    while proc.poll() is None:
        sample(group, seen)
        time.sleep(0.25)
    time.sleep(1)  # processes that outlive the command by a moment
    sample(group, seen)
    total = int((group / "cpuacct.usage").read_text()) / 1e9
    by_kind: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0])
    for name, cpu in seen.values():
        by_kind[name][0] += cpu
        by_kind[name][1] += 1
    print(f"== {args.name}: exit {proc.returncode}, wall {time.monotonic() - start:.0f} s, "
          f"CPU {total:.1f} s (cgroup), {sum(v[0] for v in by_kind.values()):.1f} s sampled",
          file=sys.stderr)
    for name, (cpu, count) in sorted(by_kind.items(), key=lambda kv: -kv[1][0])[:args.rows]:
        print(f"  {cpu:7.1f} s  x{count:<3d} {name}", file=sys.stderr)
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
