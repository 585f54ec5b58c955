"""Processes under test: start them (in a network namespace, pinned to cores), wait until they
listen, read their CPU time and memory from /proc, stop them."""
import os
import signal
import subprocess
import time
from pathlib import Path


class SetupError(Exception):
    """A contender could not be started or does not answer: the run goes on without it."""


def cpu_seconds(pid):
    """utime + stime of a process and its reaped children, in seconds (0 once it is gone)."""
    return sum(cpu_split(pid))


def cpu_split(pid):
    """(user, system) seconds of a process and its reaped children ((0, 0) once it is gone):
    the system part is the kernel working for it (its syscalls, and the network stack's work
    that runs in its context, such as delivering what it sends over loopback or a veth)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return (0.0, 0.0)
    utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
    tick = os.sysconf("SC_CLK_TCK")
    return ((utime + cutime) / tick, (stime + cstime) / tick)


def rss_kib(pid, field="VmRSS"):
    """Resident memory from /proc/PID/status: `VmRSS` (everything resident, the binary's shared
    code pages included) or `RssAnon` (the process's own heap and stacks)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_pids(pid):
    """A process and its descendants (nginx/haproxy masters and workers)."""
    children = {}
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                ppid = int((p / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(p.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def listening(pid, port):
    """Whether a TCP socket listens on `port` in the network namespace of process `pid`
    (read from /proc/PID/net/tcp*, so it works across namespaces without entering them)."""
    for table in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                return True
    return False


class Procs:
    """The processes of one contender (or the backend): started in their own session so that a
    process group kill reaches nginx/haproxy workers, logged to WORK/<name>.log."""

    def __init__(self, work):
        self.work = work
        self.procs = []

    def start(self, name, args, place, env=None):
        """Start `args` at `place` (a topology.Place: network namespace and cores)."""
        log = open(self.work / f"{name}.log", "w")
        proc = subprocess.Popen([str(a) for a in place.prefix() + list(args)], stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True, env=env)
        proc.name = name
        self.procs.append(proc)
        return proc

    def wait_listen(self, proc, port, timeout=20.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise SetupError(f"{proc.name} exited early (code {proc.returncode}): {self.tail(proc.name)}")
            if listening(proc.pid, port):
                return
            time.sleep(0.02)
        raise SetupError(f"{proc.name} did not listen on port {port} within {timeout:.0f}s: {self.tail(proc.name)}")

    def tail(self, name, lines=5):
        try:
            return " | ".join((self.work / f"{name}.log").read_text().strip().splitlines()[-lines:])
        except OSError:
            return ""

    def stop_all(self):
        for p in self.procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        self.procs = []
