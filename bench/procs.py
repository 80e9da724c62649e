"""Child processes for the benchmarks: the product's CLIs, Mosquitto, sinks; ports, RSS and cleanup."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent


def free_port() -> int:
    """A loopback TCP port that was free a moment ago (never 1883)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port: int = s.getsockname()[1]
        if port != 1883:
            return port


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class Proc:
    """A child process with its log file; stopped with SIGTERM (then SIGKILL) by `stop`."""

    def __init__(self, name: str, args: list[str], log_dir: Path, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        with self.log_path.open("ab") as log:
            # runs reuse names: what this process wrote starts here (a wait on a log line must not see older ones)
            self.log_start = log.tell()
            self.popen = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def wait_port(self, port: int, timeout: float = 60.0) -> Proc:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise RuntimeError(f"{self.name} exited ({self.popen.returncode}); log:\n{self.tail()}")
            if port_open(port):
                return self
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} not listening on {port} after {timeout}s; log:\n{self.tail()}")

    def tail(self, chars: int = 3000) -> str:
        """The end of what this process wrote to its log."""
        try:
            with self.log_path.open("rb") as log:
                log.seek(self.log_start)
                return log.read().decode(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self, timeout: float = 20.0) -> None:
        if self.popen.poll() is not None:
            return
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(10)


TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a live process so far (utime + stime in /proc/PID/stat, all threads)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()  # the command name may hold spaces and brackets
    return (int(fields[11]) + int(fields[12])) / TICKS


class CpuWatch:
    """CPU seconds each server process spends over a measured interval: made before it, read after it.

    `CpuWatch(edge=edge.pid, bridge=bridge.pid)`; `used()` must be called while they still run. With
    `threads=True` each `used()` also appends to `readings` the seconds of each thread (by OS thread id).
    """

    def __init__(self, *, threads: bool = False, **pids: int) -> None:
        self.pids = pids
        self.start = {role: cpu_seconds(pid) for role, pid in pids.items()}
        self._thread_start = {role: thread_cpu_seconds(pid) for role, pid in pids.items()} if threads else None
        self.readings: list[dict[str, dict[int, float]]] = []

    def used(self) -> dict[str, float]:
        if self._thread_start is not None:
            self.readings.append(
                {
                    role: {
                        tid: seconds - self._thread_start[role].get(tid, 0.0)
                        for tid, seconds in thread_cpu_seconds(pid).items()
                    }
                    for role, pid in self.pids.items()
                }
            )
        return {role: cpu_seconds(pid) - self.start[role] for role, pid in self.pids.items()}


def thread_cpu_seconds(pid: int) -> dict[int, float]:
    """User + system CPU seconds of each live thread of a process, by OS thread id (/proc/PID/task)."""
    seconds: dict[int, float] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:  # the thread ended meanwhile
            continue
        seconds[int(tid)] = (int(fields[11]) + int(fields[12])) / TICKS
    return seconds


def thread_names(pid: int) -> dict[int, str]:
    """Python's name of each thread of a live Python process, by OS thread id (`py-spy dump --json`);
    {} when py-spy cannot read it."""
    try:
        dump = subprocess.run(
            [str(BIN / "py-spy"), "dump", "--pid", str(pid), "--json", "--nonblocking"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
        threads = json.loads(dump)
    except (OSError, subprocess.SubprocessError, ValueError):
        return {}
    return {t["os_thread_id"]: t["thread_name"] or "?" for t in threads if t.get("os_thread_id")}


def rss_kb(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of a process in KiB, from /proc."""
    values = {"VmRSS": 0, "VmHWM": 0}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in values:
                values[key] = int(rest.split()[0])
    return values["VmRSS"], values["VmHWM"]


def rss_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of a process in MB (10^6 bytes), as P3's figures and its target are labelled; /proc's "kB"
    are KiB, and KiB / 1024 (MiB) read 4.9% low."""
    rss, hwm = rss_kb(pid)
    return rss * 1024 / 1_000_000, hwm * 1024 / 1_000_000


def ensure_mosquitto() -> str:
    """Path of the mosquitto binary; installs the Debian package when it is missing."""
    found = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
    if found:
        return found
    print("mosquitto not found: apt-get update && apt-get install -y mosquitto", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update"], check=True, env=env, stdout=subprocess.DEVNULL)
    subprocess.run(["apt-get", "install", "-y", "mosquitto"], check=True, env=env, stdout=subprocess.DEVNULL)
    found = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(found).exists():
        raise RuntimeError("mosquitto could not be installed")
    return found


def mosquitto_version(binary: str) -> str:
    out = subprocess.run([binary, "-h"], capture_output=True, text=True, check=False).stdout
    return out.splitlines()[0] if out else "mosquitto (unknown version)"


def mosquitto_conf(
    port: int,
    data_dir: Path,
    *,
    persistence: str = "default",
    max_queued: int | None = None,
    bridge_to: int | None = None,
    bridge_topic: str = "outbox/# out 1",
) -> str:
    """A Mosquitto config: persistence 'off', 'default' (autosave every 1800 s) or 'durable' (save on every change)."""
    lines = [f"listener {port} 127.0.0.1", "allow_anonymous true", "user root", "max_inflight_messages 100"]
    if persistence == "off":
        lines.append("persistence false")
    else:
        lines += ["persistence true", f"persistence_location {data_dir}/"]
        if persistence == "durable":
            lines += ["autosave_on_changes true", "autosave_interval 1"]
    if max_queued is not None:
        lines.append(f"max_queued_messages {max_queued}")
    if bridge_to is not None:
        lines += [
            "connection cloud",
            f"address 127.0.0.1:{bridge_to}",
            f"topic {bridge_topic}",
            "cleansession false",
            "restart_timeout 1",
            "bridge_protocol_version mqttv311",
        ]
    return "\n".join(lines) + "\n"


def start_mosquitto(binary: str, name: str, work: Path, port: int, **conf: object) -> Proc:
    data = work / name
    data.mkdir(parents=True, exist_ok=True)
    path = work / f"{name}.conf"
    path.write_text(mosquitto_conf(port, data, **conf))  # type: ignore[arg-type]
    return Proc(name, [binary, "-c", str(path)], work).wait_port(port)


def cli(*args: str, timeout: float = 120) -> str:
    """Run one of the product's commands from the venv; its stdout, or RuntimeError with its stderr."""
    result = subprocess.run(
        [str(BIN / args[0]), *args[1:]], capture_output=True, text=True, timeout=timeout, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:3])} failed: {result.stderr.strip()[-2000:]}")
    return result.stdout
