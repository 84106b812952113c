"""Run a container of a rendered pod from the built image, configured as a kubelet would.

Where it sits: under tests/test_chart_cluster.py and tests/test_image.py, beside
``chart_helm``. There is no kubelet here, and ``podman run`` cannot start containers on
these machines, but ``buildah run --isolation chroot`` can: it runs a command inside an
image's root file system. This module turns a container of a rendered pod spec into such a
run, the way the kubelet would start it:

* command = the container's ``command``, else the image's ENTRYPOINT; args = the container's
  ``args``, else (only without a ``command``) the image's CMD;
* user and group from the security contexts (container over pod);
* the container's ``env`` (plain values), ``KUBERNETES_SERVICE_HOST``/``PORT`` pointing at
  the API server, and the ServiceAccount volume at /var/run/secrets/kubernetes.io/serviceaccount
  (a TokenRequest token, the cluster CA, the namespace);
* every volume mount: emptyDir as an empty host directory, configMap as a directory of its
  files with the volume's ``defaultMode``.

Differences from a pod, by necessity: the chroot shares the host's network and PID
namespaces (so fastobs listens on a host port, which the caller picks free, and tini is not
PID 1; ``TINI_SUBREAPER=1`` makes tini adopt orphans as PID 1 would), and the root file
system is not mounted read-only (the user is non-root, so only world-writable paths could be
written; test_image.py checks which ones exist).

Invariant: every buildah container made here is removed by :meth:`PodRun.close`, and the
process group of the run is killed there if it is still alive.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from fastobs_run import children

SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
ROOT = Path(__file__).resolve().parents[1]
BUILD_IMAGE = ROOT / "scripts" / "build-image"


def built_image() -> str:
    """The image under test: $FASTOBS_TEST_IMAGE (scripts/test builds it first), else built
    now with scripts/build-image (minutes when cold). Skips where images cannot be built
    (not root), unless FASTOBS_REQUIRE_CLUSTER=1 (CI), where that is a failure."""
    required = os.environ.get("FASTOBS_REQUIRE_CLUSTER") == "1"
    name = os.environ.get("FASTOBS_TEST_IMAGE", "")
    if name:
        found = subprocess.run(["buildah", "inspect", "--type", "image", name], capture_output=True)
        if found.returncode == 0:
            return name
    if os.geteuid() != 0 and not required:
        pytest.skip("building the image needs root (buildah --isolation=chroot, mmdebstrap)")
    res = subprocess.run([str(BUILD_IMAGE)], capture_output=True, text=True, timeout=3600, check=False)
    if res.returncode != 0:
        pytest.fail(f"scripts/build-image failed:\n{res.stderr[-4000:]}", pytrace=False)
    return res.stdout.strip().splitlines()[-1]


class PodRunError(Exception):
    """The container spec uses something this runner cannot provide, or buildah failed."""


def buildah(*args: str, timeout: float = 300) -> str:
    res = subprocess.run(["buildah", *args], capture_output=True, text=True, timeout=timeout, check=False)
    if res.returncode != 0:
        raise PodRunError(f"buildah {' '.join(args)} failed: {res.stderr.strip()}")
    return res.stdout


def image_config(image: str) -> dict[str, Any]:
    """The OCI config of ``image`` (Entrypoint, Cmd, User, Env, ExposedPorts, WorkingDir...)."""
    inspect = json.loads(buildah("inspect", "--type", "image", image))
    config: dict[str, Any] = inspect["OCIv1"]["config"]
    return config


@dataclass
class ServiceAccountFiles:
    """What the kubelet projects into every pod that mounts its ServiceAccount token."""

    token: str
    ca_file: Path
    namespace: str


@dataclass
class PodRun:
    """A running container; ``stdout``/``stderr`` are files, ``proc`` is ``buildah run``."""

    container: str
    proc: subprocess.Popen[bytes]
    workdir: Path
    argv: list[str]
    volumes: dict[str, Path]
    stdout: Path
    stderr: Path
    _closed: bool = field(default=False, repr=False)

    def output(self) -> str:
        return self.stdout.read_text(errors="replace") + self.stderr.read_text(errors="replace")

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout=timeout)

    def processes(self) -> dict[int, tuple[str, int]]:
        """pid -> (comm, ppid) of every live process under the buildah run."""
        found: dict[int, tuple[str, int]] = {}
        frontier = [self.proc.pid]
        while frontier:
            pid = frontier.pop()
            for child in children(pid):
                stat = proc_stat(child)
                if stat is not None:
                    found[child] = (stat[0], stat[2])
                    frontier.append(child)
        return found

    def pid_of(self, comm: str) -> int:
        """The host pid of the (first) process named ``comm`` in the container."""
        for pid, (name, _) in sorted(self.processes().items()):
            if name == comm:
                return pid
        raise PodRunError(f"no {comm} process under buildah run (pid {self.proc.pid})")

    def close(self) -> None:
        """Kill whatever still runs (every process of the container, then buildah), wait
        until it is gone, and remove the buildah container."""
        if self._closed:
            return
        self._closed = True
        if self.proc.poll() is None:
            # tini starts its child in a new process group, and fastobs does the same for
            # every command: killing buildah's group alone would leave them running.
            inside = self.processes()
            for pid in inside:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(os.getpgid(pid), signal.SIGKILL)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=10)
            deadline = time.monotonic() + 10
            while any(proc_stat(pid) for pid in inside) and time.monotonic() < deadline:
                time.sleep(0.05)
        with contextlib.suppress(PodRunError, subprocess.TimeoutExpired):
            buildah("rm", self.container, timeout=60)


def proc_stat(pid: int) -> tuple[str, str, int] | None:
    """(comm, state letter, ppid) of a host process; None once it is gone (reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    comm = stat[stat.index("(") + 1 : stat.rindex(")")]
    fields = stat[stat.rindex(")") + 2 :].split()
    return comm, fields[0], int(fields[1])


def _user(pod: Mapping[str, Any], container: Mapping[str, Any], image_user: str) -> str:
    pod_ctx = pod.get("securityContext") or {}
    ctx = container.get("securityContext") or {}
    uid = ctx.get("runAsUser", pod_ctx.get("runAsUser"))
    gid = ctx.get("runAsGroup", pod_ctx.get("runAsGroup"))
    if uid is None:
        return image_user or "0"
    return f"{uid}:{gid}" if gid is not None else str(uid)


def start(
    image: str,
    pod: Mapping[str, Any],
    container_name: str,
    workdir: Path,
    *,
    config_maps: Mapping[str, Mapping[str, str]],
    service_account: ServiceAccountFiles | None,
    api_server: tuple[str, int],
    extra_env: Mapping[str, str] | None = None,
    add_hosts: Mapping[str, str] | None = None,
    args_filter: Callable[[list[str]], list[str]] | None = None,
) -> PodRun:
    """Start ``container_name`` of ``pod`` (a pod spec) from ``image``; see the module docstring.

    ``config_maps`` maps a ConfigMap name to its data, for the configMap volumes;
    ``args_filter`` may rewrite the args (to run the same container with one change).
    """
    container = next(c for c in pod["containers"] if c["name"] == container_name)
    config = image_config(image)
    command = list(container.get("command") or config.get("Entrypoint") or [])
    args = list(container.get("args") or ([] if container.get("command") else config.get("Cmd") or []))
    if args_filter is not None:
        args = args_filter(args)
    workdir.mkdir(parents=True, exist_ok=True)
    volumes = _volumes(pod, workdir, config_maps)

    mounts: list[tuple[Path, str, str]] = []  # (host path, path in the container, ro|rw)
    for mount in container.get("volumeMounts", []):
        if mount.get("subPath"):
            raise PodRunError(f"subPath mounts are not supported: {mount}")
        mounts.append((volumes[mount["name"]], mount["mountPath"], "ro" if mount.get("readOnly") else "rw"))
    env: dict[str, str] = {}
    for item in container.get("env", []):
        if "value" not in item:
            raise PodRunError(f"only plain env values are supported: {item}")
        env[item["name"]] = str(item["value"])
    host, port = api_server
    env.update(KUBERNETES_SERVICE_HOST=host, KUBERNETES_SERVICE_PORT=str(port), TINI_SUBREAPER="1")
    env.update(extra_env or {})
    automount = pod.get("automountServiceAccountToken", True)
    if automount and service_account is not None:
        sa = workdir / "serviceaccount"
        sa.mkdir()
        (sa / "token").write_text(service_account.token)
        (sa / "ca.crt").write_bytes(service_account.ca_file.read_bytes())
        (sa / "namespace").write_text(service_account.namespace)
        for f in sa.iterdir():
            f.chmod(0o644)
        mounts.append((sa, SA_DIR, "ro"))

    name = f"fastobs-pod-{secrets.token_hex(4)}"
    from_args = ["from", "--quiet", "--name", name]
    for hostname, ip in (add_hosts or {}).items():
        from_args += ["--add-host", f"{hostname}:{ip}"]
    buildah(*from_args, image)
    # buildah's chroot isolation follows symbolic links in a mount's destination on the host
    # (/var/run -> /run would mount onto the host's /run): resolve them in the image first,
    # as runc does.
    rootfs = Path(buildah("mount", name).strip())
    try:
        volume_args = [a for host_path, dest, mode in mounts
                       for a in ("--volume", f"{host_path}:{resolve_in_root(rootfs, dest)}:{mode}")]
    finally:
        buildah("umount", name)
    run = ["buildah", "run", "--isolation", "chroot", "--user", _user(pod, container, config.get("User", ""))]
    for key, value in env.items():
        run += ["--env", f"{key}={value}"]
    run += ["--cap-drop", "ALL", *volume_args, name, "--", *command, *args]
    stdout, stderr = workdir / "stdout", workdir / "stderr"
    with stdout.open("wb") as out, stderr.open("wb") as err:
        proc = subprocess.Popen(run, stdin=subprocess.DEVNULL, stdout=out, stderr=err, start_new_session=True)
    return PodRun(name, proc, workdir, [*command, *args], volumes, stdout, stderr)


def resolve_in_root(root: Path, path: str) -> str:
    """``path`` with every symbolic link resolved inside the file system at ``root``.

    Absolute link targets restart at ``root``, never at the host's /; components that do not
    exist yet are kept as they are (the mount creates them)."""
    parts = [p for p in path.split("/") if p]
    done: list[str] = []
    hops = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            done = done[:-1]
            continue
        if part == ".":
            continue
        candidate = root.joinpath(*done, part)
        if candidate.is_symlink():
            hops += 1
            if hops > 40:
                raise PodRunError(f"too many symbolic links in {path}")
            target = os.readlink(candidate)
            if target.startswith("/"):
                done = []
            parts = [p for p in target.split("/") if p] + parts
            continue
        done.append(part)
    return "/" + "/".join(done)


def _volumes(
    pod: Mapping[str, Any], workdir: Path, config_maps: Mapping[str, Mapping[str, str]]
) -> dict[str, Path]:
    volumes: dict[str, Path] = {}
    for volume in pod.get("volumes", []):
        path = workdir / "volumes" / volume["name"]
        path.mkdir(parents=True)
        if "emptyDir" in volume:
            path.chmod(0o1777)
        elif "configMap" in volume:
            source = volume["configMap"]
            if source["name"] not in config_maps:
                raise PodRunError(f"no data given for ConfigMap {source['name']}")
            for key, text in config_maps[source["name"]].items():
                (path / key).write_text(text)
                (path / key).chmod(source.get("defaultMode", 0o644))
        else:
            raise PodRunError(f"unsupported volume type: {volume}")
        volumes[volume["name"]] = path
    return volumes


def wait_for(check: Callable[[], bool], timeout: float, what: str, run: PodRun | None = None) -> float:
    """Poll ``check`` until true; returns the seconds it took. Unlike fastobs_run.wait_until,
    it stops as soon as the container exits, and the failure carries the container's output."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if check():
            return time.monotonic() - started
        if run is not None and run.proc.poll() is not None:
            raise AssertionError(f"{what}: the container exited ({run.proc.returncode}):\n{run.output()}")
        time.sleep(0.1)
    tail = f":\n{run.output()[-4000:]}" if run is not None else ""
    raise AssertionError(f"{what}: not within {timeout:.0f} s{tail}")
