"""A second kube-apiserver on the test cluster's etcd, for scenarios that restart or pause one.

Where it sits: used by the fault scenarios of ``tests/faults/`` that stop, restart or
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
        self.cluster = dataclasses.replace(cluster, state_dir=directory, port=kc.free_ports(1)[0],
                                           _children=[], _die_with_parent=True)
        self.pid = 0

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
        """Start it and wait for /readyz; returns the seconds that took."""
        t0 = time.monotonic()
        proc = kc._spawn(kc._apiserver_args(self.cluster), self.cluster.apiserver_log, True)
        self.cluster._children.append(proc)
        self.pid = proc.pid
        while not kc.is_ready(self.cluster, timeout=2.0):
            if proc.poll() is not None:
                raise RuntimeError(f"the extra kube-apiserver exited:\n{self.cluster.log_tails()}")
            if time.monotonic() - t0 > timeout:
                raise RuntimeError(f"the extra kube-apiserver is not ready:\n{self.cluster.log_tails()}")
            time.sleep(0.1)
        return time.monotonic() - t0

    def kill(self) -> None:
        """SIGKILL, as a crash or an OOM kill would stop it (its graceful stop takes ~10 s)."""
        if self.pid:
            os.kill(self.pid, signal.SIGKILL)
            for proc in self.cluster._children:
                proc.wait(timeout=10)
            self.cluster._children.clear()
            self.pid = 0

    def pause(self) -> None:
        os.kill(self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.pid, signal.SIGCONT)

    def ready(self) -> bool:
        return kc.is_ready(self.cluster, timeout=1.0)
