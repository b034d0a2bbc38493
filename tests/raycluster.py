"""A real Ray cluster on the loopback interface for the tests: `ray start` processes, never local_mode.

The head and each joining node are started with `ray start` (as a user would on a few machines),
with their own temporary folder so that every process belongs to this cluster alone; stopping
kills exactly those processes, by id (never `ray stop`, which would stop every Ray cluster on the
machine, other sessions' included).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RAY = str(Path(sys.executable).with_name("ray"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cmdline(pid: int) -> str:
    try:
        return (
            Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        )
    except OSError:
        return ""


def _parent(pid: int) -> int | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[1])
    except (OSError, IndexError, ValueError):
        return None


def _pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def descendants(roots: set[int]) -> set[int]:
    """`roots` and every process below them."""
    found = set(roots)
    changed = True
    while changed:
        changed = False
        for pid in _pids():
            if pid not in found and _parent(pid) in found:
                found.add(pid)
                changed = True
    return found


class RayCluster:
    """A head node (and optionally more nodes) on 127.0.0.1, each with `cpus` CPUs."""

    def __init__(self, cpus: int = 1, env: dict[str, str] | None = None) -> None:
        self.temp = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))  # short: socket paths
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        # loopback only: no token authentication (Ray turns it on when ~/.ray/auth_token exists,
        # which a local `ray.init()` elsewhere on the machine may have written)
        self.env = {
            **os.environ,
            **(env or {}),
            "RAY_USAGE_STATS_ENABLED": "0",
            "RAY_AUTH_MODE": "disabled",
        }
        self.env.pop("RAY_ADDRESS", None)
        self.nodes: list[int] = []  # node manager ports, in start order
        self.start_node(cpus, head=True)

    def _ray(self, *args: str) -> None:
        done = subprocess.run(
            [RAY, *args], env=self.env, capture_output=True, text=True, timeout=120
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"ray {' '.join(args)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
            )

    def start_node(self, cpus: int = 1, *, head: bool = False) -> int:
        port = free_port()
        common = [
            "--node-ip-address",
            "127.0.0.1",
            "--num-cpus",
            str(cpus),
            "--num-gpus",
            "0",
            "--node-manager-port",
            str(port),
            "--object-store-memory",
            str(200 * 2**20),
            "--disable-usage-stats",
        ]
        if head:
            self._ray(
                "start",
                "--head",
                "--port",
                str(self.port),
                "--temp-dir",
                str(self.temp),
                "--include-dashboard=false",
                *common,
            )
        else:
            self._ray("start", "--address", self.address, *common)
        self.nodes.append(port)
        return port

    def processes(self) -> set[int]:
        """Every process of this cluster: those naming its folder or port, and their children."""
        marks = (str(self.temp), f"127.0.0.1:{self.port}", f":{self.port} ")
        roots = {pid for pid in _pids() if any(m in _cmdline(pid) for m in marks)}
        return descendants(roots)

    def raylet(self, node_port: int) -> int:
        for pid in _pids():
            line = _cmdline(pid)
            if "raylet" in line and f"--node_manager_port={node_port}" in line:
                return pid
        raise LookupError(f"no raylet with node manager port {node_port}")

    def workers(self, title: str, node_port: int | None = None) -> list[int]:
        """Worker processes running a task whose process title contains `title`."""
        within = self.processes() if node_port is None else descendants({self.raylet(node_port)})
        return [
            pid for pid in within if _cmdline(pid).startswith("ray::") and title in _cmdline(pid)
        ]

    def kill_node(self, node_port: int) -> None:
        """The node disappears: its raylet and everything below it, killed at once."""
        for pid in descendants({self.raylet(node_port)}):
            _kill(pid)

    def kill_node_if_alive(self, node_port: int) -> None:
        with contextlib.suppress(LookupError):
            self.kill_node(node_port)

    def stop(self) -> None:
        for _ in range(3):
            pids = self.processes()
            if not pids:
                break
            for pid in pids:
                _kill(pid)
            time.sleep(0.5)


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
