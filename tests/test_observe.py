"""End to end: the real ``fastobs`` command against the real kube-apiserver.

Each test runs ``python -m fastobs`` as a subprocess with a recording command (argv,
environment, stdin written to a file) and checks what oc observe users rely on.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fastobs_run import (
    alive,
    configmap,
    hanging_command,
    headers,
    recorder,
    run_fastobs,
    start_fastobs,
)

pytestmark = pytest.mark.cluster

TS = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(Z|[+-]\d\d:\d\d)"
NO_METRICS = "--listen-addr="


def make_cms(k8s, ns: str, n: int, **kw) -> None:  # type: ignore[no-untyped-def]
    items = [configmap(f"cm{i}", ns, **kw) for i in range(n)]
    k8s.apply({"apiVersion": "v1", "kind": "List", "items": items})


def test_namespaced_argv_env_headers_and_sync_markers(k8s, ns, tmp_path: Path) -> None:
    """argv is [cmd args...] ns name (no trailing empty arg); env and headers as oc."""
    make_cms(k8s, ns, 3, data={"k": "v"})
    rec = recorder(tmp_path)
    res = run_fastobs(
        k8s.env, "configmaps", "-n", ns, "--once", NO_METRICS, "--type-env-var", "T_TYPE",
        "--object-env-var", "T_OBJ", "--", str(rec.path), "lead",
    )
    assert res.returncode == 0, res.stderr
    calls = rec.calls()
    assert sorted(c["argv"] for c in calls) == [["lead", ns, f"cm{i}"] for i in range(3)]
    for c in calls:
        assert c["env"]["T_TYPE"] == "Sync"
        obj = c["env"]["T_OBJ"]
        assert obj.endswith("\n") and json.loads(obj)["kind"] == "ConfigMap"
        assert obj == json.dumps(json.loads(obj), separators=(",", ":"), sort_keys=True) + "\n"
        assert c["stdin"] == "", "stdin must be /dev/null"
    lines = headers(res.stdout)
    assert re.fullmatch(rf"# {TS} Sync started", lines[0])
    assert re.fullmatch(rf"# {TS} Sync ended", lines[-1])
    for line in lines[1:-1]:
        assert re.fullmatch(rf"# {TS} Sync \d+\t{re.escape(str(rec.path))} lead {ns} cm\d", line), line


def test_cluster_scoped_argv_and_short_name(k8s, tmp_path: Path) -> None:
    """Cluster-scoped resources get only the name; short names resolve through discovery."""
    label = f"t{time.monotonic_ns()}"
    for i in range(2):
        k8s.apply({"apiVersion": "v1", "kind": "Namespace",
                   "metadata": {"name": f"{label}-{i}", "labels": {"suite": label}}})
    rec = recorder(tmp_path)
    res = run_fastobs(k8s.env, "ns", "-l", f"suite={label}", "--once", NO_METRICS, "--", str(rec.path))
    assert res.returncode == 0, res.stderr
    assert sorted(rec.argvs()) == [[f"{label}-0"], [f"{label}-1"]]


def test_template_argument_and_strict_mode(k8s, ns, tmp_path: Path) -> None:
    """--template output is one argv element; missing keys are empty unless strict."""
    k8s.apply(configmap("a", ns, data={"x": "hello world"}))
    k8s.apply(configmap("b", ns, data={}))
    rec = recorder(tmp_path)
    res = run_fastobs(k8s.env, "cm", "-n", ns, "--once", NO_METRICS, "--template", "{.data.x}",
                      "--", str(rec.path))
    assert res.returncode == 0, res.stderr
    assert sorted(rec.argvs()) == [[ns, "a", "hello world"], [ns, "b", ""]]
    strict = run_fastobs(k8s.env, "cm", "-n", ns, "--once", NO_METRICS, "--template", "{.data.x}",
                         "--allow-missing-template-keys=false", "--", str(rec.path))
    assert strict.returncode == 1
    assert "error: unable to write arguments" in strict.stderr and "is not found" in strict.stderr
    assert "Traceback" not in strict.stderr


GO_TEMPLATE = (
    "{{.metadata.name}} {{if .data}}{{len .data}}{{else}}-{{end}}"
    '{{range $k, $v := .data}} {{$k}}={{printf "%q" $v}}{{end}} {{.metadata.missing}}'
    " {{with .metadata.labels}}{{.}}{{end}}{{range .spec.ports}} {{.port}}/{{.protocol}}{{end}}"
    ' {{.metadata.resourceVersion | len | printf "%T"}}'
)


@pytest.mark.parametrize("fmt", ["go-template", "templatefile"])
def test_go_template_argument_is_what_kubectl_prints(k8s, ns, tmp_path: Path, fmt: str) -> None:
    """-o go-template: the argument is byte for byte kubectl's go-template printer output."""
    k8s.apply(configmap("a", ns, data={"x": "hello world", "q": 'say "hi"\n\tthere', "u.key": "üñí €"},
                        labels={"app": "web"}))
    k8s.apply(configmap("b", ns))
    k8s.apply({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "svc", "namespace": ns},
               "spec": {"ports": [{"name": "http", "port": 80}, {"name": "dns", "port": 53,
                                                                   "protocol": "UDP"}]}})
    template = GO_TEMPLATE
    if fmt == "templatefile":
        path = tmp_path / "argument.gotmpl"
        path.write_text(GO_TEMPLATE)
        template = str(path)
    for resource, names in (("cm", ["a", "b"]), ("svc", ["svc"])):
        rec = recorder(tmp_path, f"record-{resource}")
        res = run_fastobs(k8s.env, resource, "-n", ns, "--once", NO_METRICS, "-o", fmt, "--template",
                          template, "--", str(rec.path))
        assert res.returncode == 0, res.stderr
        got = {argv[1]: argv[2] for argv in rec.argvs()}
        assert sorted(got) == names
        for name in names:
            want = k8s.kubectl("get", resource, name, "-n", ns, "-o", f"go-template={GO_TEMPLATE}").stdout
            print(f"{resource}/{name}: {got[name]!r}")
            assert got[name] == want


def test_go_template_strict_error_is_ocs(k8s, ns, tmp_path: Path) -> None:
    """--allow-missing-template-keys=false: kubectl's missingkey error, exit 1; oc's wrapping
    word for word at --loglevel 8, the object's key in its place below."""
    k8s.apply(configmap("nox", ns, data={"y": "1"}))
    rec = recorder(tmp_path)
    args = ["cm", "-n", ns, "--once", NO_METRICS, "-o", "go-template", "--template", "{{.data.x}}",
            "--allow-missing-template-keys=false"]
    kubectl = k8s.kubectl("get", "cm", "nox", "-n", ns, "-o", "go-template={{.data.x}}",
                          "--allow-missing-template-keys=false", check=False)
    assert kubectl.returncode == 1
    kubectl_error = kubectl.stderr.strip().splitlines()[-1].removeprefix("error: ")
    assert kubectl_error.endswith('map has no entry for key "x"')
    res = run_fastobs(k8s.env, *args, "--loglevel=8", "--", str(rec.path))
    assert res.returncode == 1
    assert "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines()[-1] == "error: unable to write arguments: " + kubectl_error
    res = run_fastobs(k8s.env, *args, "--", str(rec.path))
    assert res.returncode == 1
    last = res.stderr.strip().splitlines()[-1]
    assert last == f"error: unable to write arguments for {ns}/nox: {kubectl_error}"
    assert rec.calls() == []
    default = run_fastobs(k8s.env, "cm", "-n", ns, "--once", NO_METRICS, "-o", "go-template", "--template",
                          "{{.data.x}}", "--", str(rec.path))
    assert default.returncode == 0, default.stderr
    assert rec.argvs() == [[ns, "nox", "<no value>"]]


def test_go_template_parse_error_at_startup(k8s, ns) -> None:
    res = run_fastobs(k8s.env, "cm", "-n", ns, "--once", NO_METRICS, "-o", "go-template", "--template",
                      "{{.metadata.name", "--", "true")
    assert res.returncode == 1
    assert res.stderr.strip().splitlines()[-1] == (
        "error: error parsing template {{.metadata.name, template: output:1: unclosed action"
    )


def test_strict_template_error_keeps_secret_data_out(k8s, ns) -> None:
    """oc's strict-template error prints the whole object, a Secret's data included; fastobs
    names the object's key and the missing path, and prints the object only at --loglevel 8."""
    password = "c3VwZXItc2VjcmV0LXBhc3N3b3Jk"
    k8s.apply({"apiVersion": "v1", "kind": "Secret", "data": {"password": password},
               "metadata": {"name": "db", "namespace": ns, "labels": {"app": "strict"}}})
    args = ["secrets", "-n", ns, "-l", "app=strict", "--once", NO_METRICS, "--template", "{.data.user}",
            "--allow-missing-template-keys=false"]
    res = run_fastobs(k8s.env, *args, "--", "true")
    print(res.stderr)
    assert res.returncode == 1
    assert res.stderr.splitlines()[-1] == (
        f"error: unable to write arguments for {ns}/db: "
        'error executing jsonpath "{.data.user}" at .data.user: user is not found '
        "(object data withheld; --loglevel 8 or more prints it)"
    )
    assert password not in res.stderr + res.stdout
    loud = run_fastobs(k8s.env, *args, "--loglevel=8", "--", "true")
    assert loud.returncode == 1
    assert "error: unable to write arguments: error executing jsonpath" in loud.stderr
    assert f'"password":"{password}"' in loud.stderr


def test_template_parse_error_at_startup(k8s, ns, tmp_path: Path) -> None:
    res = run_fastobs(k8s.env, "cm", "-n", ns, "--once", NO_METRICS, "--template", "{.metadata.name",
                      "--", "true")
    assert res.returncode == 1
    assert res.stderr.strip().splitlines()[-1].startswith("error: error parsing jsonpath {.metadata.name")


def test_object_data_cannot_inject_commands(k8s, ns, tmp_path: Path) -> None:
    """Object data with quotes, spaces and $(...) reaches argv verbatim; nothing runs."""
    evil = "$(touch " + str(tmp_path / "pwned") + "); `id` \"q\" 'x' && rm -rf /"
    k8s.apply(configmap("evil", ns, data={"x": evil}))
    rec = recorder(tmp_path)
    res = run_fastobs(k8s.env, "cm", "-n", ns, "--once", NO_METRICS, "--template", "{.data.x}",
                      "--", str(rec.path))
    assert res.returncode == 0, res.stderr
    assert rec.argvs() == [[ns, "evil", evil]]
    assert not (tmp_path / "pwned").exists()
    # oc quotes such elements Go-style in the header line.
    assert '"$(touch ' in res.stdout


def test_names_and_delete_at_startup(k8s, ns, tmp_path: Path) -> None:
    """Keys from --names missing on the server get the delete command, without template arg."""
    k8s.apply(configmap("present", ns, data={"x": "1"}))
    names = tmp_path / "names.sh"
    names.write_text(f"#!/bin/sh\necho {ns}/gone\necho {ns}/present\necho\n")
    names.chmod(0o755)
    rec = recorder(tmp_path)
    dele = recorder(tmp_path, "delete")
    res = run_fastobs(k8s.env, "cm", "-n", ns, "--once", NO_METRICS, "--template", "{.data.x}",
                      "--names", str(names), "--delete", str(dele.path), "--delete", "d-arg",
                      "--", str(rec.path))
    assert res.returncode == 0, res.stderr
    assert rec.argvs() == [[ns, "present", "1"]]
    assert dele.argvs() == [["d-arg", ns, "gone"]]
    assert re.search(rf"# {TS} Deleted \t{re.escape(str(dele.path))} d-arg {ns} gone", res.stdout)


def test_delete_without_names_warns_and_watch_delete_runs(k8s, ns, tmp_path: Path) -> None:
    """A watch DELETED runs --delete with the final state (template rendered from it)."""
    k8s.apply(configmap("keep", ns, data={"x": "k"}))
    rec = recorder(tmp_path)
    dele = recorder(tmp_path, "delete")
    proc = start_fastobs(k8s.env, "cm", "-n", ns, NO_METRICS, "--template", "{.data.x}",
                         "--delete", str(dele.path), "--", str(rec.path))
    try:
        rec.wait_for(lambda c: len(c) == 1)
        k8s.apply(configmap("tmp", ns, data={"x": "final"}))
        rec.wait_for(lambda c: len(c) == 2)
        k8s.kubectl("delete", "cm", "tmp", "-n", ns)
        dele.wait_for(lambda c: len(c) == 1)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert dele.argvs() == [[ns, "tmp", "final"]]
    assert 'warning: If you are modifying resources outside of "/v1, Resource=configmaps"' in err


def test_label_selector_stop_matching_is_delete(k8s, ns, tmp_path: Path) -> None:
    """An object that stops matching -l arrives as Deleted."""
    k8s.apply(configmap("m", ns, labels={"watch": "yes"}))
    rec = recorder(tmp_path)
    dele = recorder(tmp_path, "delete")
    proc = start_fastobs(k8s.env, "cm", "-n", ns, "-l", "watch=yes", NO_METRICS,
                         "--delete", str(dele.path), "--", str(rec.path))
    try:
        rec.wait_for(lambda c: len(c) == 1)
        k8s.kubectl("label", "cm", "m", "-n", ns, "watch=no", "--overwrite")
        dele.wait_for(lambda c: len(c) == 1)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    assert dele.argvs() == [[ns, "m"]]


def test_retry_on_exit_code(k8s, ns, tmp_path: Path) -> None:
    """An attempt exiting with --retry-on-exit-code is retried at once, up to --retry-count."""
    k8s.apply(configmap("r", ns))
    counter = tmp_path / "count"
    script = tmp_path / "flaky.sh"
    script.write_text(f'#!/bin/sh\necho x >> {counter}\n[ "$(wc -l < {counter})" -ge 3 ] && exit 0\nexit 7\n')
    script.chmod(0o755)
    res = run_fastobs(k8s.env, "cm", "-n", ns, "--once", NO_METRICS, "--retry-on-exit-code", "7",
                      "--", str(script))
    assert res.returncode == 0, res.stderr
    assert len(counter.read_text().splitlines()) == 3
    counter.unlink()
    res = run_fastobs(k8s.env, "cm", "-n", ns, "--once", NO_METRICS, "--retry-on-exit-code", "7",
                      "--retry-count", "1", "--", str(script))
    assert len(counter.read_text().splitlines()) == 2
    assert f'error: command "{script}" exited with status code 7' in res.stderr


def test_maximum_errors(k8s, ns, tmp_path: Path) -> None:
    """Failed events count up to --maximum-errors, then exit 1 with oc's message."""
    make_cms(k8s, ns, 4)
    rec = recorder(tmp_path)
    res = run_fastobs(k8s.env, "cm", "-n", ns, "--once", NO_METRICS, "--maximum-errors", "2",
                      "--workers", "1", "--concurrency", "1", "--", str(rec.path),
                      extra_env={"T_EXIT": "3"})
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert lines[-1] == "error: reached maximum error limit of 2, exiting"
    failures = sum("exited with status code 3" in line for line in lines)
    # The limit stops dispatching at once; a command the worker had already started when
    # the second failure came back may still finish (and is reported), never more.
    assert 2 <= failures <= 3, lines
    assert len(rec.calls()) == failures


def test_once_with_empty_list(k8s, ns) -> None:
    res = run_fastobs(k8s.env, "cm", "-n", ns, "--once", NO_METRICS, "--", "true")
    assert res.returncode == 0
    assert res.stderr.strip() == "Nothing to sync, exiting immediately"
    assert res.stdout == ""


def test_commands_inherit_only_stdio_and_default_sigpipe(k8s, ns, tmp_path: Path) -> None:
    """A descriptor fastobs itself inherited (left open by whoever started it) and the
    workers' sockets never reach a command, and a command gets SIGPIPE back at its default
    (Python ignores it), so `yes | head` pipelines in commands end as they should."""
    make_cms(k8s, ns, 3)
    script = tmp_path / "fds.sh"
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    # The shell records the signal state it was given (Python, below, would report its
    # own), then becomes Python to probe descriptors: dash's redirections open their own,
    # and the probe opens nothing before it looks.
    probe = tmp_path / "fds.py"
    probe.write_text(
        "import fcntl, sys\n"
        "def is_open(fd):\n"
        "    try:\n"
        "        fcntl.fcntl(fd, fcntl.F_GETFD)\n"
        "        return True\n"
        "    except OSError:\n"
        "        return False\n"
        "fds = [fd for fd in range(1024) if is_open(fd)]\n"
        "open(sys.argv[1], 'w').write(' '.join(map(str, fds)))\n"
        "blocked = [l for l in open('/proc/self/status') if l.startswith('SigBlk')]\n"
        "open(sys.argv[1] + '.blk', 'w').write(blocked[0])\n")
    script.write_text(f'#!/bin/sh\ngrep -E "^SigIgn" /proc/$$/status > {out_dir}/"$2".sig\n'
                      f'exec {sys.executable} {probe} {out_dir}/"$2".fds\n')
    script.chmod(0o755)
    leaked_r, leaked_w = os.pipe()
    os.set_inheritable(leaked_w, True)
    try:
        res = subprocess.run(
            [sys.executable, "-m", "fastobs", "cm", "-n", ns, "--once", NO_METRICS, "--workers", "2",
             "--", str(script)],
            env=k8s.env, capture_output=True, text=True, timeout=90, pass_fds=(leaked_w,))
    finally:
        os.close(leaked_r)
        os.close(leaked_w)
    assert res.returncode == 0, res.stderr
    for i in range(3):
        fds = sorted(int(x) for x in (out_dir / f"cm{i}.fds").read_text().split())
        sig = dict(ln.split(":\t") for ln in (out_dir / f"cm{i}.sig").read_text().splitlines())
        sig.update(ln.split(":\t") for ln in (out_dir / f"cm{i}.fds.blk").read_text().splitlines())
        print(f"cm{i}: descriptors {fds}, {sig} (fastobs inherited fd {leaked_w})")
        assert fds == [0, 1, 2]
        ignored = int(sig["SigIgn"], 16)
        assert not ignored & (1 << (13 - 1)), "SIGPIPE is ignored in the command"
        assert int(sig["SigBlk"], 16) == 0


def test_unknown_resource(k8s) -> None:
    res = run_fastobs(k8s.env, "foos", "--once")
    assert res.returncode == 1
    assert res.stderr.strip() == 'the server doesn\'t have a resource type "foos"'  # no "error: ", as oc


def _workers_with_marker(marker: str) -> list[int]:
    """Live fastobs worker processes whose environment holds ``marker``."""
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            if (marker.encode() in (d / "environ").read_bytes()
                    and b"fastobs.worker" in (d / "cmdline").read_bytes()
                    and (d / "stat").read_text().split()[2] != "Z"):
                found.append(int(d.name))
        except OSError:
            continue
    return found


@pytest.mark.parametrize("end", ["discovery times out", "SIGKILL during discovery"])
def test_workers_start_during_discovery_and_never_outlive_it(end: str) -> None:
    """Worker processes start before discovery, so their boot overlaps it; when discovery
    fails, or fastobs is killed in the middle of it, none of them is left behind."""
    import socket as sock_mod

    listener = sock_mod.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)  # accepts connections, never answers: discovery hangs
    port = listener.getsockname()[1]
    marker = f"FASTOBS_TEST_MARK=discovery-{time.monotonic_ns()}"
    env = dict(os.environ, **dict([marker.split("=", 1)]))
    env.pop("KUBECONFIG", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "fastobs", "cm", "--server", f"http://127.0.0.1:{port}", "--token", "t",
         "--request-timeout", "4s", "--workers", "3", NO_METRICS, "--", "true"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while len(_workers_with_marker(marker)) < 3 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.02)
        booted = _workers_with_marker(marker)
        print(f"{end}: workers running while discovery hangs: {booted}")
        assert len(booted) == 3, "the workers were not started during discovery"
        if end == "SIGKILL during discovery":
            proc.kill()
        proc.wait(60)
        gone_by = time.monotonic() + (5 if end.startswith("SIGKILL") else 0.5)
        while _workers_with_marker(marker) and time.monotonic() < gone_by:
            time.sleep(0.05)
        left = _workers_with_marker(marker)
        print(f"{end}: exit {proc.returncode}, workers left: {left}")
        assert left == []
        if end == "discovery times out":
            assert proc.returncode == 1, proc.stderr.read() if proc.stderr else ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        listener.close()


_SLOW_WORKER_BOOT = """\
import time
with open("/proc/self/cmdline", "rb") as f:
    if b"fastobs.worker" in f.read():
        time.sleep(3)  # the worker is still booting when discovery fails
"""


def test_discovery_fails_while_prestarted_workers_boot(tmp_path: Path) -> None:
    """Discovery is refused at once while the pre-started workers are still importing
    (a sitecustomize holds each one for 3 s): fastobs exits 1 with the error, and no
    worker survives it, not even one that has not yet read a byte of its socket."""
    (tmp_path / "sitecustomize.py").write_text(_SLOW_WORKER_BOOT)
    import socket as sock_mod

    closed = sock_mod.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]  # bound, never listening: connections are refused
    marker = f"FASTOBS_TEST_MARK=refused-{time.monotonic_ns()}"
    env = dict(os.environ, PYTHONPATH=str(tmp_path), **dict([marker.split("=", 1)]))
    env.pop("KUBECONFIG", None)
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "fastobs", "cm", "--server", f"https://127.0.0.1:{port}", "--token", "t",
         "--workers", "3", NO_METRICS, "--", "true"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen: set[int] = set()
    try:
        while proc.poll() is None and time.monotonic() - t0 < 60:
            seen.update(_workers_with_marker(marker))
            time.sleep(0.01)
        proc.wait(60)
        left = _workers_with_marker(marker)  # before reading stderr: a survivor would hold it open
        _, err = proc.communicate(timeout=60)
        print(f"exit {proc.returncode} after {time.monotonic() - t0:.2f} s; workers seen booting: "
              f"{sorted(seen)}; left: {left}; stderr: {err.strip()}")
        assert len(seen) == 3, "the workers were not started before discovery"
        assert proc.returncode == 1
        assert err.startswith("The connection to the server 127.0.0.1:"), err
        assert left == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        closed.close()


def test_forbidden_for_restricted_identity(k8s, restricted) -> None:
    """A list the identity may not do: clear error lines, then oc's list-error exit (255)."""
    env = dict(k8s.env, KUBECONFIG=str(restricted.kubeconfig))
    res = run_fastobs(env, "secrets", "-n", restricted.namespace, "--once", NO_METRICS,
                      "--maximum-errors", "1", "--", "true", timeout=60)
    assert res.returncode == 255, res.stderr
    assert "forbidden" in res.stderr.lower()
    assert "Maximum list errors of 1 reached, exiting" in res.stderr
    assert "Traceback" not in res.stderr


def test_large_object_through_stdin_and_file(k8s, ns, tmp_path: Path) -> None:
    """A 200 KiB object reaches the command on stdin or in a file; the env var cannot carry it."""
    big = "x" * (200 * 1024)
    k8s.apply(configmap("big", ns, data={"blob": big}))
    for channel in ("stdin", "file"):
        rec = recorder(tmp_path, f"rec-{channel}")
        res = run_fastobs(k8s.env, "cm", "-n", ns, "--once", NO_METRICS, "--object-channel", channel,
                          "--", str(rec.path))
        assert res.returncode == 0, res.stderr
        (call,) = rec.calls()
        text = call["stdin"] if channel == "stdin" else call["file"]
        assert json.loads(text)["data"]["blob"] == big
    rec = recorder(tmp_path, "rec-env")
    res = run_fastobs(k8s.env, "cm", "-n", ns, "--once", NO_METRICS, "--object-env-var", "T_OBJ",
                      "--", str(rec.path))
    assert res.returncode == 0
    assert "argument list too long" in res.stderr
    assert rec.calls() == []


def test_sigterm_lets_running_commands_finish(k8s, ns, tmp_path: Path) -> None:
    """SIGTERM stops intake, lets the running command end, exits 0."""
    k8s.apply(configmap("slow", ns))
    marker = tmp_path / "finished"
    script = tmp_path / "slow.sh"
    began = tmp_path / "began"
    script.write_text(f"#!/bin/sh\necho started\ntouch {began}\nsleep 1\ntouch {marker}\n")
    script.chmod(0o755)
    proc = start_fastobs(k8s.env, "cm", "-n", ns, NO_METRICS, "--", str(script))
    deadline = time.monotonic() + 20
    while not began.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert marker.exists(), "the running command was not allowed to finish"
    assert "started" in out


def test_sigterm_grace_then_kill_and_second_signal(k8s, ns, tmp_path: Path) -> None:
    """After --shutdown-grace the command's process group is killed; fastobs still exits 0."""
    k8s.apply(configmap("hang", ns))
    script, pidfile = hanging_command(tmp_path)
    proc = start_fastobs(k8s.env, "cm", "-n", ns, NO_METRICS, "--shutdown-grace", "1s", "--kill-grace", "1s",
                         "--", str(script))
    deadline = time.monotonic() + 20
    while not pidfile.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    grandchild = int(pidfile.read_text())
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=30)
    assert proc.returncode == 0
    time.sleep(0.2)
    assert not alive(grandchild), "the command's process group survived shutdown"


def test_exit_after(k8s, ns, tmp_path: Path) -> None:
    k8s.apply(configmap("e", ns))
    res = run_fastobs(k8s.env, "cm", "-n", ns, NO_METRICS, "--exit-after", "2s", "--", "true")
    assert res.returncode == 0
    assert res.stderr.strip().splitlines()[-1] == "Shutting down after 2s ..."


def test_print_metrics_on_exit(k8s, ns) -> None:
    make_cms(k8s, ns, 2)
    res = run_fastobs(k8s.env, "cm", "-n", ns, "--once", "--listen-addr=127.0.0.1:0",
                      "--print-metrics-on-exit", "--", "true")
    assert res.returncode == 0, res.stderr
    assert 'observe_counts{type="Sync"} 2' in res.stdout
    assert 'observe_exec_durations_milliseconds_count{exit_code="0",type="Sync"} 2' in res.stdout


def test_resync_period_reruns_everything(k8s, ns, tmp_path: Path) -> None:
    make_cms(k8s, ns, 2)
    rec = recorder(tmp_path)
    res = run_fastobs(k8s.env, "cm", "-n", ns, NO_METRICS, "--resync-period", "1s", "--exit-after", "3500ms",
                      "--", str(rec.path))
    assert res.returncode == 0, res.stderr
    counts: dict[str, int] = {}
    for argv in rec.argvs():
        counts[argv[1]] = counts.get(argv[1], 0) + 1
    assert set(counts) == {"cm0", "cm1"} and min(counts.values()) >= 3, counts


def test_grouped_output_never_interleaves(k8s, ns, tmp_path: Path) -> None:
    """Each command's output stays together under its own header."""
    make_cms(k8s, ns, 6)
    script = tmp_path / "chatty.sh"
    script.write_text('#!/bin/sh\nfor i in 1 2 3 4 5; do echo "$2 line $i"; sleep 0.01; done\n')
    script.chmod(0o755)
    res = run_fastobs(k8s.env, "cm", "-n", ns, "--once", NO_METRICS, "--concurrency", "6", "--", str(script))
    assert res.returncode == 0, res.stderr
    blocks = re.split(r"^# .*$\n", res.stdout, flags=re.M)
    bodies = [b for b in blocks if b.strip()]
    assert len(bodies) == 6
    for body in bodies:
        names = {line.split()[0] for line in body.splitlines()}
        assert len(names) == 1, f"output of different commands mixed: {body!r}"


def test_stream_output_prefixes_key(k8s, ns, tmp_path: Path) -> None:
    k8s.apply(configmap("s", ns))
    res = run_fastobs(k8s.env, "cm", "-n", ns, "--once", NO_METRICS, "--output-mode", "stream",
                      "--", "sh", "-c", "echo out; echo err >&2", "sh")
    assert res.returncode == 0, res.stderr
    assert f"{ns}/s: out" in res.stdout.splitlines()
    assert f"{ns}/s: err" in res.stderr.splitlines()


def test_no_command_prints_headers_only(k8s, ns) -> None:
    k8s.apply(configmap("h", ns))
    res = run_fastobs(k8s.env, "cm", "-n", ns, "--once", NO_METRICS)
    assert res.returncode == 0, res.stderr
    assert re.search(rf'# {TS} Sync \d+\t"" {ns} h$', res.stdout, flags=re.M)
    quiet = run_fastobs(k8s.env, "cm", "-n", ns, "--once", "-q", NO_METRICS)
    assert quiet.returncode == 0 and quiet.stdout == ""


def test_help_and_usage_errors_need_no_cluster() -> None:
    res = subprocess.run([sys.executable, "-m", "fastobs"], capture_output=True, text=True, check=False)
    assert res.returncode == 1
    assert "you must specify at least one argument containing the resource to observe" in res.stderr


def test_json_logs_carry_key_type_rv_and_never_object_data(k8s, ns) -> None:
    """--log-format json: one JSON record per failure with key/type/rv; no object contents."""
    secret = "s3cr3t-value-that-must-not-be-logged"
    k8s.apply(configmap("j", ns, data={"password": secret}))
    res = run_fastobs(k8s.env, "cm", "-n", ns, "--once", NO_METRICS, "--log-format", "json",
                      "--log-level", "debug", "--object-env-var", "T_OBJ", "--", "sh", "-c", "exit 4")
    assert res.returncode == 0
    assert secret not in res.stderr and secret not in res.stdout
    records = [json.loads(line) for line in res.stderr.splitlines() if line.startswith("{")]
    failed = [r for r in records if r.get("key") == f"{ns}/j"]
    assert failed, res.stderr
    rv = k8s.kubectl("get", "cm", "j", "-n", ns, "-o", "jsonpath={.metadata.resourceVersion}").stdout
    assert failed[0]["type"] == "Sync" and failed[0]["rv"] == rv and failed[0]["code"] == "4"
    # oc's error line is a JSON record too, with the same words and the key's fields.
    assert any(r["level"] == "error" and r["msg"] == 'command "sh" exited with status code 4'
               and r.get("key") == f"{ns}/j" for r in records), records
    assert not any(line.startswith("error:") for line in res.stderr.splitlines())
