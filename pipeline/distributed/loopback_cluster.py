"""A multi-node Ray cluster on one machine, for tests and benchmarks of the multi-node path.

Each node is a separate ``ray start`` (its own raylet, object store, temp folder and loopback
address: the head 127.0.0.1, workers 127.0.0.2, 127.0.0.3, …), as on separate machines.  They
all live in a network namespace made for the cluster (``unshare --net``) that holds only a
loopback interface: Ray's servers listen on every interface of their namespace, so nothing of
the cluster is reachable from outside it, and Ray cannot pick up the machine's routable address.
Commands that use the cluster (a driver, ``ray status``) run in the namespace too
(:meth:`LoopbackCluster.command`).  Needs root, or unprivileged user namespaces, for unshare.

    with LoopbackCluster(Path("/tmp/lc"), nodes=2) as cluster:
        subprocess.run(cluster.command(["metadns", "run", "c.yaml", "--address", cluster.address]),
                       env=cluster.env)
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

HEAD_PORT = 6379
"""GCS port of the head node (the namespace is new, so every port is free in it)."""
START_TIMEOUT_S = 120.0
FAST_FAILURE_DETECTION = {"RAY_health_check_period_ms": "500", "RAY_health_check_failure_threshold": "4"}
"""Ray declares a node dead after this many failed health checks of this period (by default
3 s × 5): a test that kills a node need not wait as long."""


def namespace_unavailable() -> str | None:
    """Why a network namespace cannot be made on this machine, or None when it can."""
    missing = [tool for tool in ("unshare", "nsenter", "ip") if shutil.which(tool) is None]
    if missing:
        return f"{', '.join(missing)} not found (util-linux, iproute2)"
    probe = subprocess.run(["unshare", "--net", "true"], capture_output=True, text=True)
    return None if probe.returncode == 0 else f"unshare --net failed: {probe.stderr.strip() or probe.returncode}"


class LoopbackCluster:
    """``nodes`` Ray nodes of ``cpus_per_node`` logical CPUs each in a private network namespace;
    node k (0 = head) has address 127.0.0.(k+1) and temp folder ``folder/node<k>`` (keep
    ``folder`` short: Ray's socket paths must fit 107 bytes).  Token authentication is off (one
    machine); ``fast_failure_detection`` shortens Ray's health checks (FAST_FAILURE_DETECTION).
    Use as a context manager, or call :meth:`close`."""

    def __init__(self, folder: Path, nodes: int = 2, cpus_per_node: int = 2, fast_failure_detection: bool = False):
        reason = namespace_unavailable()
        if reason is not None:
            raise RuntimeError(f"cannot make a network namespace for the cluster: {reason}")
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.address = f"127.0.0.1:{HEAD_PORT}"
        self.env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
                    **(FAST_FAILURE_DETECTION if fast_failure_detection else {})}
        self._holder = subprocess.Popen(["unshare", "--net", "sleep", "infinity"])
        self.namespace = f"/proc/{self._holder.pid}/ns/net"
        try:
            self._wait_for_namespace()
            self._check(["ip", "link", "set", "lo", "up"])
            ray = str(Path(sys.executable).with_name("ray"))
            common = [f"--num-cpus={cpus_per_node}", "--disable-usage-stats"]
            self._check([ray, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={HEAD_PORT}",
                         "--include-dashboard=false", f"--temp-dir={self.folder / 'node0'}", *common])
            for node in range(1, nodes):
                self._check([ray, "start", f"--address={self.address}", f"--node-ip-address=127.0.0.{node + 1}",
                             f"--temp-dir={self.folder / f'node{node}'}", *common])
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> "LoopbackCluster":
        return self

    def __exit__(self, *_) -> None:
        self.close()

    def command(self, args: list[str]) -> list[str]:
        """``args`` run inside the cluster's namespace."""
        return ["nsenter", f"--net={self.namespace}", *args]

    def raylet(self, node: int) -> int:
        """PID of node ``node``'s raylet (0: the head)."""
        for pid in self.processes():
            words = process_title(pid).split(" ")
            if words[0].endswith("/raylet") and f"--node_ip_address=127.0.0.{node + 1}" in words:
                return pid
        raise RuntimeError(f"the raylet of node {node} (127.0.0.{node + 1}) is not running")

    def processes(self) -> list[int]:
        """PIDs of every process in the cluster's namespace."""
        mine = os.readlink(self.namespace)
        pids = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    if os.readlink(entry / "ns" / "net") == mine:
                        pids.append(int(entry.name))
                except OSError:   # gone meanwhile
                    pass
        return pids

    def close(self) -> None:
        """Kill every process of the namespace (Ray's daemons and workers, drivers left in it)."""
        if self._holder.poll() is None:
            for pid in self.processes():
                if pid != self._holder.pid:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
            self._holder.kill()
        self._holder.wait()

    def _wait_for_namespace(self) -> None:
        deadline = time.monotonic() + 10
        while os.readlink(self.namespace) == os.readlink("/proc/self/ns/net"):   # unshare has not run yet
            if time.monotonic() > deadline or self._holder.poll() is not None:
                raise RuntimeError("unshare --net did not enter a new network namespace")
            time.sleep(0.05)

    def _check(self, args: list[str]) -> None:
        result = subprocess.run(self.command(args), env=self.env, capture_output=True, text=True,
                                timeout=START_TIMEOUT_S)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed (exit {result.returncode}):\n{result.stdout}\n{result.stderr}")


def children(pid: int) -> list[int]:
    """PIDs of the direct children of ``pid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
            except (OSError, IndexError, ValueError):
                pass
    return found


def process_title(pid: int) -> str:
    """The command line of ``pid`` as one string (Ray workers show e.g. ``ray::RunActor``)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").strip().decode(errors="replace")
    except OSError:
        return ""
