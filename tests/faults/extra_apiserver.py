"""A second kube-apiserver on the test cluster's etcd, for scenarios that restart or pause one.

Where it sits: used by the fault scenarios of ``tests/faults/`` that kill, restart or
SIGSTOP an API server. Restarting the session's own apiserver would disturb every later
test; this one is a second member of an HA control plane: same etcd, same tokens and
service-account keys, its own port and serving certificate. Writes made through the
session's apiserver reach a fastobs watching through this one, as in a real HA cluster.

Invariant: the process is always stopped when the scenario ends (and dies with the test
process if that is killed first).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import k8s_cluster as kc


class ExtraApiserver:
    """start(), kill(), pause() and resume() one extra kube-apiserver."""

    def __init__(self, cluster: kc.Cluster, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "logs").mkdir(exist_ok=True)
        for name in ("tokens.csv", "sa.pub", "sa.key"):
            shutil.copy(cluster.state_dir / name, directory / name)
        self.cluster = dataclasses.replace(cluster, state_dir=directory, _procs={}, _locks={},
                                           _die_with_parent=True, timings={})
        self._started = False

    @property
    def server(self) -> str:
        return self.cluster.server

    def kubeconfig(self, path: Path) -> Path:
        c = self.cluster
        path.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "extra",
            "clusters": [{"name": "extra", "cluster": {"server": c.server,
                                                       "certificate-authority": str(c.ca_file)}}],
            "users": [{"name": "extra", "user": {"token": c.token}}],
            "contexts": [{"name": "extra", "context": {"cluster": "extra", "user": "extra"}}],
        }))
        return path

    def start(self, timeout: float = 90.0) -> float:
        """Start it (the first time on a new port, then on the same one) and wait for
        /readyz; returns the seconds that took."""
        deadline = time.monotonic() + timeout
        if self._started:
            return self._run(deadline)
        self._started = True
        with kc.reserved_ports(1) as (port,):  # held until the server binds it
            self.cluster.port = port
            return self._run(deadline)

    def _run(self, deadline: float) -> float:
        try:
            return kc._run_server(self.cluster, "kube-apiserver", deadline)
        except kc._AttemptFailed as exc:
            raise RuntimeError(f"the extra kube-apiserver: {exc}\n{self.cluster.log_tails()}") from None

    @property
    def _proc(self) -> subprocess.Popen[bytes] | None:
        return self.cluster._procs.get("kube-apiserver")

    def kill(self) -> None:
        """SIGKILL, as a crash or an OOM kill would stop it (its graceful stop takes ~10 s)."""
        proc = self.cluster._procs.pop("kube-apiserver", None)
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)

    def pause(self) -> None:
        assert self._proc is not None
        os.kill(self._proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self._proc is not None
        os.kill(self._proc.pid, signal.SIGCONT)
