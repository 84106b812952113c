"""oc parity: behaviours where fastobs once differed from ``oc observe``, now as oc does them.

Each test runs the real ``fastobs`` against the real kube-apiserver and checks what the real
``oc observe`` was seen to do on the same server for the same input (the messages, their
order, the exit code); the expected lines here are oc's, not fastobs's own idea. Where
fastobs runs commands in parallel, the test says which part of oc's order it keeps.
"""

from __future__ import annotations

import contextlib
import re
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from fastobs_run import configmap, headers, recorder, run_fastobs, start_fastobs

pytestmark = pytest.mark.cluster

TS = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:Z|[+-]\d\d:\d\d)"
NO_METRICS = "--listen-addr="


def make_cms(k8s, ns: str, names: list[str], **kw) -> None:  # type: ignore[no-untyped-def]
    k8s.apply({"apiVersion": "v1", "kind": "List", "items": [configmap(n, ns, **kw) for n in names]})


def script(tmp_path: Path, name: str, body: str) -> Path:
    path = tmp_path / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return path


def kinds(stdout: str) -> list[str]:
    """The ``#`` lines without their time stamps: ``Sync started``, ``Sync <rv>\\t<cmd>``..."""
    return [re.sub(rf"^# {TS} ", "", line) for line in headers(stdout)]


def stamps(stdout: str) -> list[datetime]:
    return [datetime.fromisoformat(line.split()[1].replace("Z", "+00:00")) for line in headers(stdout)]


# --- 1. an error at the first object comes after the lines oc had printed ------------------


def test_strict_template_error_after_sync_started(k8s, ns, tmp_path: Path) -> None:
    """oc prints ``Sync started`` for the event, then fails to render its argument: no
    header for it, no ``Sync ended``, the error, exit 1."""
    make_cms(k8s, ns, ["a"], data={"x": "1"})
    rec = recorder(tmp_path)
    strict = ("cm", "-n", ns, "--once", NO_METRICS, "--template", "{.data.missing}",
              "--allow-missing-template-keys=false")
    # Below --loglevel 8 the message names the object instead of quoting it (deliberate, see
    # the migration table); from 8 on it is oc's message word for word.
    for level, error in (("0", f"error: unable to write arguments for {ns}/a: error executing jsonpath "),
                         ("8", "error: unable to write arguments: error executing jsonpath ")):
        res = run_fastobs(k8s.env, *strict, "--loglevel", level, "--", str(rec.path))
        print(res.stdout, res.stderr[:200])
        assert res.returncode == 1
        assert kinds(res.stdout) == ["Sync started"]
        errors = [line for line in res.stderr.splitlines() if line.startswith("error: ")]
        assert errors[0].startswith(error + '"{.data.missing}"'), errors
    assert rec.calls() == []


def test_malformed_names_key_after_the_deletes_before_it(k8s, ns, tmp_path: Path) -> None:
    """oc: ``Sync started``, the Sync rows, ``Sync ended``, the deletes of the keys sorted
    before the malformed one, then ``error: unexpected key format``; nothing after it runs."""
    make_cms(k8s, ns, ["a", "b"])
    names = script(tmp_path, "names.sh", f"printf '{ns}/zz\\n{ns}/gone-b\\n{ns}/x/y\\n{ns}/gone-a\\n'\n")
    dele = recorder(tmp_path, "delete")
    res = run_fastobs(k8s.env, "cm", "-n", ns, "--once", NO_METRICS, "--workers", "1", "--concurrency", "1",
                      "--names", str(names), "--delete", str(dele.path), "--", "true")
    print(res.stdout, res.stderr)
    assert res.returncode == 1
    rows = kinds(res.stdout)
    assert rows[0] == "Sync started" and rows[3] == "Sync ended", rows
    assert sorted(rows[1:3]) == [f"Sync {rv}\ttrue {ns} {n}" for rv, n in zip(_rvs(k8s, ns, "a", "b"), "ab",
                                                                                 strict=True)]
    assert rows[4:] == [f"Deleted \t{dele.path} {ns} gone-a", f"Deleted \t{dele.path} {ns} gone-b"]
    assert dele.argvs() == [[ns, "gone-a"], [ns, "gone-b"]]
    assert res.stderr == f'error: unexpected key format: "{ns}/x/y"\n'


def _rvs(k8s, ns: str, *names: str) -> list[str]:  # type: ignore[no-untyped-def]
    return [k8s.kubectl("get", "cm", n, "-n", ns, "-o", "jsonpath={.metadata.resourceVersion}").stdout
            for n in names]


# --- 2. --maximum-errors never lets parallel commands fail more often than allowed ---------


@pytest.mark.parametrize(("limit", "runs"), [("1", 1), ("3", 3), ("0", 1)])
def test_maximum_errors_with_parallel_commands(k8s, ns, tmp_path: Path, limit: str, runs: int) -> None:
    """oc runs one failing command after another and stops at the failure that reaches the
    limit (a limit of 0 stops at the first): N commands run, N error lines, then oc's line.
    fastobs runs commands in parallel, yet starts no command that could exceed the limit."""
    make_cms(k8s, ns, [f"cm{i}" for i in range(8)])
    rec = recorder(tmp_path)
    res = run_fastobs(k8s.env, "cm", "-n", ns, "--once", NO_METRICS, "--maximum-errors", limit,
                      "--workers", "2", "--concurrency", "8", "--", str(rec.path), extra_env={"T_EXIT": "3"})
    lines = res.stderr.strip().splitlines()
    failure = f'error: command "{rec.path}" exited with status code 3'
    failures = [line for line in lines if line == failure]
    print(f"--maximum-errors={limit}: {len(rec.calls())} commands ran, {len(failures)} error lines")
    assert res.returncode == 1
    assert lines[-1] == f"error: reached maximum error limit of {limit}, exiting"
    assert len(failures) == runs and len(lines) == runs + 1, lines
    assert len(rec.calls()) == runs


def test_maximum_errors_keeps_commands_parallel(k8s, ns, tmp_path: Path) -> None:
    """While the failures still allowed outnumber the running commands, commands overlap."""
    make_cms(k8s, ns, [f"cm{i}" for i in range(6)])
    act = script(tmp_path, "act.sh", f"touch {tmp_path}/run.$2\nsleep 0.5\nls {tmp_path} | grep -c '^run' "
                 f">> {tmp_path}/seen\nrm {tmp_path}/run.$2\nexit 3\n")
    res = run_fastobs(k8s.env, "cm", "-n", ns, "--once", NO_METRICS, "--maximum-errors", "20",
                      "--workers", "2", "--concurrency", "8", "--", str(act))
    seen = [int(n) for n in (tmp_path / "seen").read_text().split()]
    print(f"commands running at once, as each saw it: {seen}")
    assert res.returncode == 0, res.stderr
    assert len(seen) == 6 and max(seen) > 1


# --- 3. --loglevel 4 logs every retry --------------------------------------------------------


def test_loglevel_4_logs_each_retry(k8s, ns, tmp_path: Path) -> None:
    """oc at --loglevel 4 logs ``retrying command: exit status N`` on stderr before each retry
    (of the command, and of the --names command); below 4 it logs nothing of the kind."""
    make_cms(k8s, ns, ["a"])
    always7 = script(tmp_path, "seven.sh", "exit 7\n")
    for level, expected in (("4", 2), ("3", 0)):
        res = run_fastobs(k8s.env, "cm", "-n", ns, "--once", NO_METRICS, "--loglevel", level,
                          "--retry-on-exit-code", "7", "--", str(always7))
        retries = retry_lines(res.stderr)
        print(f"--loglevel {level}: {retries}")
        assert res.returncode == 0, res.stderr
        assert len(retries) == expected
        assert res.stderr.splitlines()[-1] == f'error: command "{always7}" exited with status code 7'
    killed = script(tmp_path, "killed.sh", "kill -9 $$\n")
    res = run_fastobs(k8s.env, "cm", "-n", ns, "--once", NO_METRICS, "-v", "4", "--retry-on-exit-code=-1",
                      "--retry-count", "1", "--", str(killed))
    assert retry_lines(res.stderr, "signal: killed") != []
    counter = tmp_path / "names-runs"
    names = script(tmp_path, "names.sh", f"echo x >> {counter}\n[ $(wc -l < {counter}) -ge 2 ] || exit 7\n")
    res = run_fastobs(k8s.env, "cm", "-n", ns, "--once", NO_METRICS, "--loglevel", "4",
                      "--retry-on-exit-code", "7", "--names", str(names), "--delete", "true", "--", "true")
    assert res.returncode == 0, res.stderr
    assert len(retry_lines(res.stderr)) == 1


def retry_lines(stderr: str, how: str = "exit status 7") -> list[str]:
    """fastobs's log lines carrying oc's retry message (the log format adds a level and a key)."""
    return [line for line in stderr.splitlines() if re.search(f"retrying command: {how}( \\[|$)", line)]


# --- 4. --names deletes come after Sync ended, in key order ---------------------------------


def test_names_deletes_after_sync_ended_in_key_order(k8s, ns, tmp_path: Path) -> None:
    """oc queues the deletes of --names keys that are not on the server behind the listed
    objects, in the sorted order of the names output: they run after ``Sync ended``. Here the
    Sync commands are slow and there are workers to spare, so a delete that did not wait
    would run (and print) first."""
    make_cms(k8s, ns, ["a", "b", "c"])
    names = script(tmp_path, "names.sh", f"printf '{ns}/zz\\n{ns}/b\\n{ns}/gone\\n{ns}/also-gone\\n'\n")
    dele = recorder(tmp_path, "delete")
    slow = script(tmp_path, "slow.sh", "sleep 0.5\n")
    for parallel in (("--workers", "4", "--concurrency", "4"), ("--workers", "1", "--concurrency", "1")):
        res = run_fastobs(k8s.env, "cm", "-n", ns, "--once", NO_METRICS, *parallel, "--names", str(names),
                          "--delete", str(dele.path), "--", str(slow))
        rows = kinds(res.stdout)
        print(parallel, rows)
        assert res.returncode == 0, res.stderr
        assert rows[0] == "Sync started" and rows[4] == "Sync ended", rows
        assert all(row.startswith("Sync ") for row in rows[1:4])
        deletes = [f"Deleted \t{dele.path} {ns} {n}" for n in ("also-gone", "gone", "zz")]
        if parallel[1] == "1":
            assert rows[5:] == deletes  # one command at a time: oc's order exactly
        else:
            assert sorted(rows[5:]) == deletes
    assert dele.argvs()[-3:] == [[ns, "also-gone"], [ns, "gone"], [ns, "zz"]]


# --- 5. the # lines' time stamps never go backwards -----------------------------------------


def test_header_stamps_never_go_backwards(k8s, ns, tmp_path: Path) -> None:
    """oc stamps each ``#`` line as it prints it, one command at a time, so the stamps only go
    forward. Here a command that starts early ends late (its header is printed after a
    later command's), and the first command outlasts a second boundary before ``Sync
    started`` is printed."""
    make_cms(k8s, ns, ["a", "b", "c"])
    # One worker, two slots: a (2.5 s) and b (1.1 s) start together; c starts when b ends,
    # a second later, and ends long before a.
    act = script(tmp_path, "act.sh", 'date +%s >> "$0.$2"\ncase $2 in a) sleep 2.5;; b) sleep 1.1;; esac\n')
    res = run_fastobs(k8s.env, "cm", "-n", ns, "--once", NO_METRICS, "--workers", "1", "--concurrency", "2",
                      "--", str(act))
    assert res.returncode == 0, res.stderr
    got = stamps(res.stdout)
    print("\n".join(headers(res.stdout)))
    assert kinds(res.stdout)[0] == "Sync started" and kinds(res.stdout)[-1] == "Sync ended"
    assert got == sorted(got), "a # line is stamped earlier than the line before it"
    started = {n: int((tmp_path / f"act.sh.{n}").read_text()) for n in "abc"}
    # A header carries its command's start (the command's own clock may be a second off),
    # or the stamp of the line before it when that is later: never the time it was printed
    # (a is printed 2.5 s after its start). Under load c may start late, and a then
    # rightly carries c's stamp.
    previous = got[0].timestamp()
    for row, stamp in zip(kinds(res.stdout), got, strict=True):
        if row.startswith("Sync ") and "\t" in row:
            name = row.split()[-1]
            low, high = max(started[name] - 1, previous), max(started[name] + 1, previous)
            print(f"{name}: started {started[name]}, stamped {stamp.timestamp():.0f}, before {previous:.0f}")
            assert low <= stamp.timestamp() <= high, name
        previous = stamp.timestamp()


# --- 6. kubectl's resource-type messages, without an added "error: " -----------------------


@pytest.mark.parametrize(("arg", "line"), [
    ("foos", 'the server doesn\'t have a resource type "foos"'),
    ("foos.example.com", 'the server doesn\'t have a resource type "foos" in group "example.com"'),
    (" pods", 'the server doesn\'t have a resource type " pods"'),  # oc does not strip it
    (".apps", "error: a resource must be present, got: apps/, Resource="),
    (".", "error: unknown resource argument"),
])
def test_unknown_resource_lines(k8s, arg: str, line: str) -> None:
    res = run_fastobs(k8s.env, arg, "--once", NO_METRICS)
    print(repr(arg), "->", res.stderr)
    assert (res.returncode, res.stdout, res.stderr) == (1, "", line + "\n")


# --- 7. a refused token during discovery ----------------------------------------------------


def test_wrong_token_is_unauthorized(k8s) -> None:
    """oc's discovery gets 401 and kubectl's printer says so, with client-go's message."""
    res = run_fastobs(k8s.env, "pods", "--token", "wrong", "--once", NO_METRICS)
    assert (res.returncode, res.stdout) == (1, "")
    assert res.stderr == ("error: You must be logged in to the server (the server has asked for the client "
                          "to provide credentials)\n")



# --- 8. connection failures, as kubectl prints them ------------------------------------------


def kubeconfig(tmp_path: Path, server: str, ca: str | Path | None = None, name: str = "kc") -> Path:
    cluster = f"    certificate-authority: {ca}\n" if ca else ""
    path = tmp_path / name
    path.write_text(f"apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {server}\n"
                    f"{cluster}users:\n- name: u\n  user:\n    token: x\ncontexts:\n- name: c\n  context:\n"
                    "    cluster: c\n    user: u\ncurrent-context: c\n")
    return path


def fastobs_with(k8s, config: Path, *args: str) -> subprocess.CompletedProcess[str]:  # type: ignore[no-untyped-def]
    return run_fastobs(dict(k8s.env, KUBECONFIG=str(config)), "pods", "--once", NO_METRICS, *args)


class Listener:
    """A loopback TCP server thread: ``mode`` says what it does with each connection."""

    def __init__(self, mode: str, *, cert: tuple[Path, Path] | None = None) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.mode = mode
        self.held: list[socket.socket] = []
        self.ctx = None
        if cert is not None:
            self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self.ctx.load_cert_chain(str(cert[0]), str(cert[1]))
        if mode == "full-backlog":
            # No accept() and a full accept queue: the kernel drops new SYNs, connects hang.
            self.sock.listen(0)
            for _ in range(4):
                filler = socket.socket()
                filler.setblocking(False)
                with contextlib.suppress(BlockingIOError):
                    filler.connect(("127.0.0.1", self.port))
                self.held.append(filler)
            return
        self.sock.listen(64)
        if mode != "no-accept":
            threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        with contextlib.suppress(OSError):
            if self.mode == "http-reply":
                conn.recv(4096)
                conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            elif self.mode == "garbage-reply":
                conn.recv(4096)
                conn.sendall(b"<html>not tls</html>\n")
            elif self.mode == "tls-then-silence" and self.ctx is not None:
                self.held.append(self.ctx.wrap_socket(conn, server_side=True))
                return
            elif self.mode == "tls" and self.ctx is not None:
                self.ctx.wrap_socket(conn, server_side=True).recv(1)
            conn.close()

    def close(self) -> None:
        for s in [*self.held, self.sock]:
            s.close()

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"


@pytest.fixture
def listeners() -> Iterator[list[Listener]]:
    made: list[Listener] = []
    yield made
    for listener in made:
        listener.close()


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def expired_pki(d: Path) -> dict[str, Path]:
    """A CA and a server certificate for 127.0.0.1 that expired on 2021-01-01."""
    p = {n: d / n for n in ("ca.crt", "ca.key", "srv.crt", "srv.key", "srv.csr")}
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=fastobs-test-ca",
            "-keyout", str(p["ca.key"]), "-out", str(p["ca.crt"]))
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=expired", "-keyout", str(p["srv.key"]),
            "-out", str(p["srv.csr"]))
    db = d / "ca"
    (db / "certs").mkdir(parents=True)
    (db / "index.txt").write_text("")
    (db / "serial").write_text("01\n")
    (d / "ca.cnf").write_text(
        f"[ca]\ndefault_ca = d\n[d]\ndatabase = {db}/index.txt\nnew_certs_dir = {db}/certs\n"
        f"serial = {db}/serial\ndefault_md = sha256\npolicy = p\nx509_extensions = ext\n"
        "[p]\ncommonName = supplied\n[ext]\nsubjectAltName = IP:127.0.0.1\n")
    openssl("ca", "-batch", "-config", str(d / "ca.cnf"), "-cert", str(p["ca.crt"]),
            "-keyfile", str(p["ca.key"]), "-in", str(p["srv.csr"]), "-out", str(p["srv.crt"]),
            "-startdate", "20200101000000Z", "-enddate", "20210101000000Z")
    return p


UNABLE = "Unable to connect to the server: "


def test_refused_connection(k8s, tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    res = fastobs_with(k8s, kubeconfig(tmp_path, f"https://127.0.0.1:{port}"))
    assert (res.returncode, res.stderr) == (1, f"The connection to the server 127.0.0.1:{port} was refused - "
                                               "did you specify the right host or port?\n")


def test_unknown_host(k8s, tmp_path: Path) -> None:
    """Go's resolver names the name server that said so (the first in /etc/resolv.conf)."""
    try:
        socket.getaddrinfo("nosuchhost.invalid", 443)
        pytest.skip("nosuchhost.invalid resolves here")
    except socket.gaierror as error:
        if error.errno != socket.EAI_NONAME:
            pytest.skip(f"no name server answers here ({error})")
    servers = [line.split()[1] for line in Path("/etc/resolv.conf").read_text().splitlines()
               if line.startswith("nameserver")]
    res = fastobs_with(k8s, kubeconfig(tmp_path, "https://nosuchhost.invalid:6443"))
    print(res.stderr)
    assert res.returncode == 1
    assert res.stderr == f"{UNABLE}dial tcp: lookup nosuchhost.invalid on {servers[0]}:53: no such host\n"


def test_tls_failures(k8s, tmp_path: Path, listeners: list[Listener]) -> None:
    """An untrusted CA, a certificate for other names, an expired one, and replies that are not
    TLS: Go's words for each, after kubectl's ``Unable to connect to the server: ``."""
    sans = subprocess.run(["openssl", "x509", "-in", str(k8s.ca_file), "-noout", "-ext", "subjectAltName"],
                          capture_output=True, text=True, check=True).stdout
    names = ", ".join(re.findall(r"DNS:([^,\s]+)", sans))
    pki = expired_pki(tmp_path)
    expired = Listener("tls", cert=(pki["srv.crt"], pki["srv.key"]))
    http_reply, garbage = Listener("http-reply"), Listener("garbage-reply")
    listeners.extend([expired, http_reply, garbage])
    port = k8s.server.rsplit(":", 1)[1]
    verify = re.escape("tls: failed to verify certificate: x509: ")
    cases = {  # the expected lines are regular expressions
        "untrusted": (kubeconfig(tmp_path, k8s.server, name="a"),
                      verify + re.escape("certificate signed by unknown authority")),
        "other names": (kubeconfig(tmp_path, f"https://localhost:{port}", k8s.ca_file, name="b"),
                        verify + re.escape(f"certificate is valid for {names}, not localhost")),
        "expired": (kubeconfig(tmp_path, expired.url, pki["ca.crt"], name="c"),
                    verify + re.escape("certificate has expired or is not yet valid: current time ")
                    + TS + re.escape(" is after 2021-01-01T00:00:00Z")),
        "http reply": (kubeconfig(tmp_path, http_reply.url, name="d"),
                       re.escape("http: server gave HTTP response to HTTPS client")),
        "not tls": (kubeconfig(tmp_path, garbage.url, name="e"),
                    re.escape("tls: first record does not look like a TLS handshake")),
    }
    for case, (config, why) in cases.items():
        res = fastobs_with(k8s, config)
        print(f"{case}: {res.stderr.strip()}")
        assert res.returncode == 1
        assert re.fullmatch(re.escape(UNABLE) + why + "\n", res.stderr)


def test_timeouts(k8s, tmp_path: Path, listeners: list[Listener]) -> None:
    """Which of Go's timers fires first decides oc's words: the dial (30 s), the TLS handshake
    (10 s) or the request's deadline (--request-timeout, else 32 s for discovery). Each server
    here hangs one step; the runs go in parallel to bound the test to about half a minute."""
    pki = expired_pki(tmp_path)  # any certificate will do: the client stops checking it
    no_dial, no_handshake, no_answer = (Listener("full-backlog"), Listener("no-accept"),
                                        Listener("tls-then-silence", cert=(pki["srv.crt"], pki["srv.key"])))
    listeners.extend([no_dial, no_handshake, no_answer])
    runs = {
        "dial hangs": (no_dial, (), f"dial tcp 127.0.0.1:{no_dial.port}: i/o timeout"),
        "handshake hangs": (no_handshake, ("--request-timeout=11s",), "net/http: TLS handshake timeout"),
        "handshake hangs past the deadline": (no_handshake, ("--request-timeout=2s",),
                                              "context deadline exceeded"),
        "no answer": (no_answer, ("--request-timeout=3s",), "context deadline exceeded"),
    }
    started = time.monotonic()
    procs = {case: start_fastobs(dict(k8s.env, KUBECONFIG=str(kubeconfig(tmp_path, server.url, name=case))),
                                 "pods", "--once", NO_METRICS, "--insecure-skip-tls-verify", *flags)
             for case, (server, flags, _) in runs.items()}
    for case, proc in procs.items():
        out, err = proc.communicate(timeout=90)
        print(f"{case}: after {time.monotonic() - started:.1f} s: {err.strip()}")
        assert (proc.returncode, out, err) == (1, "", f"{UNABLE}{runs[case][2]}\n")


class Proxy:
    """A loopback TCP relay to the apiserver that can be cut: fastobs's list and watch go
    through it, and :meth:`cut` closes every connection and the port (the server goes away)."""

    def __init__(self, target: str) -> None:
        host, port = target.rsplit("//", 1)[1].rsplit(":", 1)
        self.target = (host, int(port))
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
                upstream = socket.create_connection(self.target)
            except OSError:
                return
            self.conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := a.recv(65536):
                b.sendall(data)
        with contextlib.suppress(OSError):
            b.shutdown(socket.SHUT_WR)

    def cut(self) -> None:
        # shutdown wakes the accept() of _serve; close() alone would leave it listening.
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        for conn in self.conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()


def test_watch_failures_are_logged_in_go_s_words(k8s, ns, tmp_path: Path) -> None:
    """After start-up the list and watch loop logs each failure and tries again. The API
    server going away (its connections cut, then nothing listening) is logged with Go's
    words, as oc logs them (``unexpected EOF``, ``dial tcp ...: connect: connection
    refused``), never with a Python object's repr."""
    make_cms(k8s, ns, ["a"])
    proxy = Proxy(k8s.server)
    config = tmp_path / "kubeconfig"
    config.write_text(Path(k8s.kubeconfig).read_text().replace(k8s.server, f"https://127.0.0.1:{proxy.port}"))
    proc = start_fastobs(dict(k8s.env, KUBECONFIG=str(config)), "cm", "-n", ns, NO_METRICS, "--", "true")
    guard = threading.Timer(60, proc.kill)  # bounds the wait for the first command below
    guard.start()
    try:
        assert proc.stdout is not None
        while f"\ttrue {ns} a" not in (line := proc.stdout.readline()):  # listed: watching now
            assert line, "fastobs ended before it ran the command for its first object"
        proxy.cut()
        time.sleep(3)
    finally:
        guard.cancel()
        proc.terminate()
        _, err = proc.communicate(timeout=60)
    failures = re.findall(r"watch of configmaps failed: (.*); resuming", err)
    print("\n".join(failures))
    refused = f"dial tcp 127.0.0.1:{proxy.port}: connect: connection refused"
    assert refused in failures, err
    assert set(failures) <= {"unexpected EOF", "EOF", refused}, err
    assert "object at 0x" not in err


# --- 9. --help says what fastobs does --------------------------------------------------------


def test_help_claims_hold_on_the_server(k8s, ns, tmp_path: Path) -> None:
    """--help (and docs/usage.md, made from the same texts) says the command gets one
    template argument only when --template is given, and names the go-template formats:
    each claim is checked here against what the command receives for a real object."""
    from fastobs.flags import BY_NAME

    help_text = " ".join(run_fastobs(k8s.env, "--help").stdout.split())
    assert "then, only when --template is given, one argument with its output" in help_text
    make_cms(k8s, ns, ["a"], data={"n": "1000000"})
    rec = recorder(tmp_path)
    runs = {"no template": ((), [ns, "a"])}
    for fmt in ("go-template", "template", "jsonpath"):
        assert f"`{fmt}`" in BY_NAME["output"].help
        template = "{{.data.n}} {{.metadata.name}}" if "template" in fmt else "{.data.n} {.metadata.name}"
        runs[fmt] = (("-o", fmt, "--template", template), [ns, "a", "1000000 a"])
    for case, (flags, argv) in runs.items():
        res = run_fastobs(k8s.env, "cm", "-n", ns, "--once", NO_METRICS, *flags, "--", str(rec.path))
        print(f"{case}: {rec.argvs()[-1]}")
        assert res.returncode == 0, res.stderr
        assert rec.argvs()[-1] == argv
