"""Child processes of a benchmark run: started in their own process group, always stopped.

Every child is registered in one `Children` set; leaving its `with` block (normally,
on an exception, on Ctrl-C or SIGTERM) stops all of them, SIGTERM then SIGKILL.
"""

from __future__ import annotations

import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType

import httpx

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
GATEWAY = str(Path(sys.executable).parent / "gateway")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS (now) and VmHWM (peak) of a process, in KiB, from /proc."""
    values: dict[str, int] = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            name, _, rest = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                values[name] = int(rest.split()[0])
    except OSError:
        pass
    return values


def _stat_fields(pid: int | str) -> list[str]:
    # The command name may hold spaces and parentheses: the fields start after the last ')'.
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def group_pids(pgid: int) -> list[int]:
    """Every live process in a process group: a child and whatever it forked (uvicorn's or nginx's workers)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int(_stat_fields(entry.name)[2]) == pgid:
                    pids.append(int(entry.name))
            except (OSError, IndexError, ValueError):
                continue
    return pids


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time a process has used so far, from /proc."""
    try:
        fields = _stat_fields(pid)
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def named_cpu_seconds(name: str) -> float:
    """CPU used so far by the live processes called `name` (PostgreSQL's server and its backends)."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == name:
                    total += cpu_seconds(int(entry.name))
            except OSError:
                continue
    return total


def machine_busy_seconds() -> float:
    """User and system CPU time of every process since boot, from /proc/stat.

    Interrupt time is left out: loopback traffic is handled there, and it belongs
    to no process, so counting it would blame others for the benchmark's own packets.
    """
    try:
        user, nice, system = (int(v) for v in Path("/proc/stat").read_text().split(maxsplit=4)[1:4])
    except (OSError, ValueError):
        return 0.0
    return (user + nice + system) / os.sysconf("SC_CLK_TCK")


def children_cpu_seconds() -> float:
    """CPU time of this process's children that have finished (a load generator run, once it returns)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class Child:
    def __init__(
        self, name: str, args: list[str], env: dict[str, str] | None = None, url: str | None = None, ready: str = "/"
    ) -> None:
        self.name = name
        self.url = url
        self.ready = ready  # a path that answers once the process serves
        # A file, not a pipe: a pipe nobody reads would block a chatty process.
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 (closed in stop)
        self.process = subprocess.Popen(
            args, env=env, cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    def wait_ready(self, path: str | None = None, timeout: float = 90.0) -> None:
        path = path or self.ready
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited at start:\n{self.output()[-3000:]}")
            try:
                if httpx.get(f"{self.url}{path}", timeout=1, trust_env=False).status_code < 500:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} did not answer on {self.url}{path} within {timeout:.0f} s")

    def memory(self) -> dict[str, int]:
        """The largest process of the group (a target's limit holds per process), and how many there are."""
        sizes = [memory_kib(pid) for pid in group_pids(self.pid)] or [{}]
        largest = max(sizes, key=lambda kib: kib.get("VmHWM", 0))
        return {**largest, "processes": len(sizes)}

    def cpu(self) -> float:
        """CPU used so far by the group's live processes: the workers do the work, not the supervisor."""
        return sum(cpu_seconds(pid) for pid in group_pids(self.pid))

    def stop(self, grace: float = 5.0) -> None:
        if self.process.poll() is None:
            for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
                try:
                    os.killpg(self.process.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    self.process.wait(timeout=wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
        if not self.log.closed:
            self.log.close()


class Children:
    """Every process this run started; leaving the block stops them all, whatever happened."""

    def __init__(self) -> None:
        self.children: list[Child] = []

    def start(
        self, name: str, args: list[str], env: dict[str, str] | None = None, url: str | None = None, ready: str = "/"
    ) -> Child:
        child = Child(name, args, env, url, ready)
        self.children.append(child)
        return child

    def stop(self, child: Child) -> None:
        child.stop()
        if child in self.children:
            self.children.remove(child)

    def __enter__(self) -> Children:
        def terminate(signum: int, frame: FrameType | None) -> None:
            raise SystemExit(128 + signum)

        self._previous = signal.signal(signal.SIGTERM, terminate)
        return self

    def __exit__(self, *exc: object) -> None:
        for child in reversed(self.children):
            child.stop(grace=3.0)
        self.children.clear()
        signal.signal(signal.SIGTERM, self._previous)


def base_env(**extra: str) -> dict[str, str]:
    """The parent's environment without any GATEWAY_* setting or proxy, plus `extra`."""
    proxies = ("http_proxy", "https_proxy", "no_proxy")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "BENCH_")) and k.lower() not in proxies}
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra)
    return env
