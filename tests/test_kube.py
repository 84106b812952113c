"""Tests for fastobs.kube against the real kube-apiserver: credentials (token, exec
plugin with expiry and 401 refresh, client certificates, TLS options), the effective
namespace, and kubectl-like resource resolution through discovery."""

from __future__ import annotations

import functools
import json
import os
import shutil
import ssl
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
import uvloop
from aiohttp import web

from fastobs.errors import ConfigError, ResourceError
from fastobs.kube import KubeClient, Resource

pytestmark = pytest.mark.cluster

CRD_GROUP = "fastobs.example.com"
WIDGETS_CRD = f"""
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.{CRD_GROUP}
spec:
  group: {CRD_GROUP}
  scope: Namespaced
  names: {{plural: widgets, singular: widget, kind: Widget, shortNames: [wg]}}
  versions:
  - {{name: v1, served: true, storage: true,
     schema: {{openAPIV3Schema: {{type: object, x-kubernetes-preserve-unknown-fields: true}}}}}}
---
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: gadgets.{CRD_GROUP}
spec:
  group: {CRD_GROUP}
  scope: Cluster
  names: {{plural: gadgets, singular: gadget, kind: Gadget, shortNames: [gdg]}}
  versions:
  - {{name: v1beta1, served: true, storage: false,
     schema: {{openAPIV3Schema: {{type: object, x-kubernetes-preserve-unknown-fields: true}}}}}}
  - {{name: v1, served: true, storage: true,
     schema: {{openAPIV3Schema: {{type: object, x-kubernetes-preserve-unknown-fields: true}}}}}}
"""


def aio(fn: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run an async test on a fresh uvloop loop, like the parent process does."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        uvloop.run(fn(*args, **kwargs))

    return wrapper


async def resolve_once(kubeconfig: Path | str, arg: str, **kw: Any) -> Resource:
    client = await KubeClient.connect(kubeconfig=str(kubeconfig), **kw)
    try:
        return await client.resolve(arg)
    finally:
        await client.close()


def install_crds(k8s: Any) -> None:
    """Apply the test CRDs (idempotent) and wait until discovery serves them."""
    k8s.kubectl("apply", "-f", "-", input=WIDGETS_CRD)
    k8s.kubectl("wait", "--for=condition=established", "--timeout=30s",
                f"crd/widgets.{CRD_GROUP}", f"crd/gadgets.{CRD_GROUP}")
    deadline = time.monotonic() + 30
    while True:
        try:
            uvloop.run(resolve_once(k8s.kubeconfig, f"widgets.{CRD_GROUP}"))
            uvloop.run(resolve_once(k8s.kubeconfig, f"gadgets.{CRD_GROUP}"))
            return
        except ResourceError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@pytest.fixture(scope="module")
def crds(k8s: Any) -> None:
    install_crds(k8s)


# --------------------------------------------------------------------------- resolution

CORE = [
    ("po", "", "v1", "pods", "Pod", True),
    ("pods", "", "v1", "pods", "Pod", True),
    ("pod", "", "v1", "pods", "Pod", True),
    ("Pod", "", "v1", "pods", "Pod", True),
    ("PODS", "", "v1", "pods", "Pod", True),
    ("svc", "", "v1", "services", "Service", True),
    ("cm", "", "v1", "configmaps", "ConfigMap", True),
    ("configmap", "", "v1", "configmaps", "ConfigMap", True),
    ("ns", "", "v1", "namespaces", "Namespace", False),
    ("nodes", "", "v1", "nodes", "Node", False),
    ("deploy", "apps", "v1", "deployments", "Deployment", True),
    ("deployments", "apps", "v1", "deployments", "Deployment", True),
    ("deployments.apps", "apps", "v1", "deployments", "Deployment", True),
    ("deploy.apps", "apps", "v1", "deployments", "Deployment", True),
    # Served by both the core group and events.k8s.io: kubectl picks the core group.
    ("events", "", "v1", "events", "Event", True),
    ("events.events.k8s.io", "events.k8s.io", "v1", "events", "Event", True),
    ("crd", "apiextensions.k8s.io", "v1", "customresourcedefinitions", "CustomResourceDefinition", False),
]


@pytest.mark.parametrize(("arg", "group", "version", "resource", "kind", "namespaced"), CORE)
def test_resolves_builtin_names_like_kubectl(k8s: Any, arg: str, group: str, version: str, resource: str,
                                             kind: str, namespaced: bool) -> None:
    got = uvloop.run(resolve_once(k8s.kubeconfig, arg))
    assert got == Resource(group, version, resource, kind, namespaced)


@pytest.mark.parametrize(("arg", "resource", "version", "namespaced"), [
    ("widgets", "widgets", "v1", True),
    ("widget", "widgets", "v1", True),
    ("Widget", "widgets", "v1", True),
    ("wg", "widgets", "v1", True),
    (f"widgets.{CRD_GROUP}", "widgets", "v1", True),
    (f"wg.{CRD_GROUP}", "widgets", "v1", True),
    # Cluster-scoped, two served versions: the preferred (storage, newest) one wins.
    ("gadgets", "gadgets", "v1", False),
    ("gdg", "gadgets", "v1", False),
])
def test_resolves_custom_resources(k8s: Any, crds: None, arg: str, resource: str, version: str,
                                   namespaced: bool) -> None:
    got = uvloop.run(resolve_once(k8s.kubeconfig, arg))
    assert (got.group, got.version, got.resource) == (CRD_GROUP, version, resource)
    assert got.namespaced is namespaced


def test_collection_paths_and_gvr_strings() -> None:
    pods = Resource("", "v1", "pods", "Pod", True)
    deploy = Resource("apps", "v1", "deployments", "Deployment", True)
    nodes = Resource("", "v1", "nodes", "Node", False)
    assert pods.collection_path("ns1") == "/api/v1/namespaces/ns1/pods"
    assert pods.collection_path(None) == "/api/v1/pods"
    assert deploy.collection_path("a") == "/apis/apps/v1/namespaces/a/deployments"
    assert deploy.collection_path(None) == "/apis/apps/v1/deployments"
    assert nodes.collection_path("ignored") == "/api/v1/nodes"
    assert pods.gvr_string() == "/v1, Resource=pods"
    assert deploy.gvr_string() == "apps/v1, Resource=deployments"


@pytest.mark.parametrize(("arg", "message"), [
    ("foos", 'the server doesn\'t have a resource type "foos"'),
    ("foos.example.com", 'the server doesn\'t have a resource type "foos" in group "example.com"'),
    # Split at the first dot, like oc: a version in the middle is not understood.
    ("deployment.v1.apps", 'the server doesn\'t have a resource type "deployment" in group "v1.apps"'),
    ("pods.apps", 'the server doesn\'t have a resource type "pods" in group "apps"'),
    ("", "unknown resource argument"),
    (".apps", "a resource must be present, got: apps/, Resource="),
    (".", "unknown resource argument"),
])
def test_unknown_resources_give_oc_messages(k8s: Any, arg: str, message: str) -> None:
    with pytest.raises(ResourceError) as err:
        uvloop.run(resolve_once(k8s.kubeconfig, arg))
    assert err.value.message == message


def test_unreachable_server_is_one_clear_line(tmp_path: Path) -> None:
    cfg = write_kubeconfig(tmp_path / "kc", server="https://127.0.0.1:9", user={"token": "x"},
                           cluster_extra={"insecure-skip-tls-verify": True})
    with pytest.raises(ResourceError) as err:
        uvloop.run(resolve_once(cfg, "pods"))
    assert err.value.message == ("The connection to the server 127.0.0.1:9 was refused - did you specify the "
                                 "right host or port?")


def test_legacy_discovery_resolves_the_same(k8s: Any, crds: None, monkeypatch: pytest.MonkeyPatch) -> None:
    # Servers without aggregated discovery answer /api and /apis with plain lists;
    # asking for plain JSON makes this server do the same.
    args = ["po", "Pod", "svc", "ns", "deploy", "deployments.apps", "events", "crd", "wg", "gadgets"]
    aggregated = [uvloop.run(resolve_once(k8s.kubeconfig, a)) for a in args]
    import fastobs.kube

    monkeypatch.setattr(fastobs.kube, "AGGREGATED_ACCEPT", "application/json")
    legacy = [uvloop.run(resolve_once(k8s.kubeconfig, a)) for a in args]
    assert legacy == aggregated


# --------------------------------------------------------------------------- configuration

def write_kubeconfig(path: Path, *, server: str, user: dict[str, Any], ca: str | Path | None = None,
                     namespace: str = "", cluster_extra: dict[str, Any] | None = None) -> Path:
    cluster: dict[str, Any] = {"server": server, **(cluster_extra or {})}
    if ca:
        cluster["certificate-authority"] = str(ca)
    context: dict[str, Any] = {"cluster": "c", "user": "u"}
    if namespace:
        context["namespace"] = namespace
    doc = {
        "apiVersion": "v1", "kind": "Config", "current-context": "ctx",
        "clusters": [{"name": "c", "cluster": cluster}],
        "users": [{"name": "u", "user": user}],
        "contexts": [{"name": "ctx", "context": context},
                     {"name": "other", "context": {**context, "namespace": "from-other"}}],
    }
    path.write_text(json.dumps(doc))  # JSON is YAML
    return path


@aio
async def test_token_request_and_namespace_defaults(k8s: Any, tmp_path: Path) -> None:
    plain = write_kubeconfig(tmp_path / "a", server=k8s.server, ca=k8s.ca_file, user={"token": k8s.token})
    with_ns = write_kubeconfig(tmp_path / "b", server=k8s.server, ca=k8s.ca_file, user={"token": k8s.token},
                               namespace="from-context")
    for kubeconfig, kw, want in [
        (plain, {}, "default"),
        (with_ns, {}, "from-context"),
        (with_ns, {"namespace": "explicit"}, "explicit"),
        (with_ns, {"context": "other"}, "from-other"),
    ]:
        client = await KubeClient.connect(kubeconfig=str(kubeconfig), **kw)
        try:
            assert client.namespace == want
            resp = await client.request("GET", "/api/v1/namespaces/default")
            async with resp:
                assert resp.status == 200
                assert (await resp.json())["metadata"]["name"] == "default"
        finally:
            await client.close()


@aio
async def test_kubeconfig_env_is_used_when_no_flag(k8s: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBECONFIG", f"/nonexistent/kc{os.pathsep}{k8s.kubeconfig}")
    client = await KubeClient.connect()
    try:
        assert client.server == k8s.server
    finally:
        await client.close()


def test_configuration_errors_are_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, k8s: Any) -> None:
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    cases: list[tuple[dict[str, str], str]] = [
        ({}, "no configuration has been provided"),
        ({"kubeconfig": str(tmp_path / "nope")}, f"stat {tmp_path / 'nope'}: no such file or directory"),
        ({"kubeconfig": str(k8s.kubeconfig), "context": "nope"}, 'context "nope" does not exist'),
    ]
    (tmp_path / "garbage").write_text("clusters: [\n")
    garbage = f'error loading config file "{tmp_path}/garbage": '
    cases.append(({"kubeconfig": str(tmp_path / "garbage")}, garbage))
    for kw, start in cases:
        with pytest.raises(ConfigError) as err:
            uvloop.run(KubeClient.connect(**kw))
        assert err.value.message.startswith(start), err.value.message
        assert "\n" not in err.value.message


KUBECTL = Path(sys.executable).parent / "kubectl"


@pytest.mark.parametrize("text", ["hello\n", '"a string"\n', "- a\n- b\n", "42\n", "4.5\n", "true\n"],
                         ids=["bare string", "quoted string", "list", "integer", "float", "bool"])
def test_a_kubeconfig_that_is_not_a_mapping_is_reported_as_kubectl_does(tmp_path: Path, text: str) -> None:
    """kubectl's own words, not a Python error about item assignment."""
    path = tmp_path / "config"
    path.write_text(text)
    env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
    ours = subprocess.run([sys.executable, "-m", "fastobs", "configmaps", "--kubeconfig", str(path), "--",
                           "true"], capture_output=True, text=True, env=env, timeout=60)
    theirs = subprocess.run([str(KUBECTL), "--kubeconfig", str(path), "get", "configmaps"],
                            capture_output=True, text=True, env=env, timeout=60)
    assert (ours.returncode, theirs.returncode) == (1, 1)
    assert ours.stderr == theirs.stderr, (ours.stderr, theirs.stderr)
    assert ours.stderr.startswith(f'error: error loading config file "{path}": ')


def test_a_kubeconfig_that_is_not_yaml_is_reported_in_kubectls_frame(tmp_path: Path) -> None:
    path = tmp_path / "config"
    path.write_text("clusters: [\n")
    env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
    ours = subprocess.run([sys.executable, "-m", "fastobs", "configmaps", "--kubeconfig", str(path), "--",
                           "true"], capture_output=True, text=True, env=env, timeout=60)
    theirs = subprocess.run([str(KUBECTL), "--kubeconfig", str(path), "get", "configmaps"],
                            capture_output=True, text=True, env=env, timeout=60)
    frame = f'error: error loading config file "{path}": '
    assert theirs.stderr.startswith(frame) and ours.stderr.startswith(frame), (ours.stderr, theirs.stderr)
    assert ours.returncode == 1 and ours.stderr.count("\n") == 1


@aio
async def test_flag_overrides_win_over_the_kubeconfig(k8s: Any, tmp_path: Path) -> None:
    wrong = write_kubeconfig(tmp_path / "kc", server="https://127.0.0.1:9", ca=k8s.ca_file,
                             user={"token": "wrong"})
    client = await KubeClient.connect(kubeconfig=str(wrong), server=k8s.server, token=k8s.token,
                                      insecure_skip_tls_verify=True)
    try:
        assert client.server == k8s.server
        assert await get_status(client) == 200
    finally:
        await client.close()


@aio
async def test_server_and_token_flags_need_no_kubeconfig(k8s: Any, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    client = await KubeClient.connect(server=k8s.server, token=k8s.token, insecure_skip_tls_verify=True)
    try:
        assert client.namespace == "default"
        assert (await client.resolve("deploy")).group == "apps"
    finally:
        await client.close()


# --------------------------------------------------------------------------- exec plugins

def exec_plugin(tmp_path: Path, tokens: list[str], lifetime_s: float) -> tuple[Path, Path]:
    """A credential plugin that hands out ``tokens`` in turn (the last one forever) and
    logs each run to a file; its credentials expire ``lifetime_s`` after issue."""
    script, runs = tmp_path / "plugin.py", tmp_path / "plugin-runs"
    script.write_text(f"""#!{os.path.realpath(sys.executable)}
import datetime, json, os
runs = {str(runs)!r}
n = len(open(runs).read().splitlines()) if os.path.exists(runs) else 0
with open(runs, "a") as f:
    f.write(os.environ.get("KUBERNETES_EXEC_INFO", "") + "\\n")
tokens = {tokens!r}
exp = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds={lifetime_s})
print(json.dumps({{"apiVersion": "client.authentication.k8s.io/v1", "kind": "ExecCredential",
    "status": {{"token": tokens[min(n, len(tokens) - 1)],
               "expirationTimestamp": exp.strftime("%Y-%m-%dT%H:%M:%SZ")}}}}))
""")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script, runs


def plugin_runs(runs: Path) -> int:
    return len(runs.read_text().splitlines()) if runs.exists() else 0


def exec_user(script: Path) -> dict[str, Any]:
    return {"exec": {"apiVersion": "client.authentication.k8s.io/v1", "command": str(script),
                     "interactiveMode": "Never"}}


async def get_status(client: KubeClient, path: str = "/api/v1/namespaces/default") -> int:
    resp = await client.request("GET", path)
    async with resp:
        await resp.read()
        return resp.status


@aio
async def test_exec_plugin_token_is_reused_until_it_expires(k8s: Any, tmp_path: Path) -> None:
    script, runs = exec_plugin(tmp_path, [k8s.token], lifetime_s=3600)
    cfg = write_kubeconfig(tmp_path / "kc", server=k8s.server, ca=k8s.ca_file, user=exec_user(script))
    client = await KubeClient.connect(kubeconfig=str(cfg))
    try:
        for _ in range(3):
            assert await get_status(client) == 200
        assert plugin_runs(runs) == 1
        assert json.loads(runs.read_text().splitlines()[0])["kind"] == "ExecCredential"
    finally:
        await client.close()


@aio
async def test_exec_plugin_runs_again_after_expiry(k8s: Any, tmp_path: Path) -> None:
    # The kubernetes loader refreshes 5 minutes before expirationTimestamp, so a
    # credential that lives 60 s is already stale at the next request.
    script, runs = exec_plugin(tmp_path, [k8s.token], lifetime_s=60)
    cfg = write_kubeconfig(tmp_path / "kc", server=k8s.server, ca=k8s.ca_file, user=exec_user(script))
    client = await KubeClient.connect(kubeconfig=str(cfg))
    try:
        first = plugin_runs(runs)
        assert await get_status(client) == 200
        assert await get_status(client) == 200
        assert plugin_runs(runs) >= first + 2
    finally:
        await client.close()


@aio
async def test_401_reloads_credentials_and_retries_once(k8s: Any, tmp_path: Path) -> None:
    # The first credential is rejected but not expired: only the 401 can make the
    # client ask the plugin again.
    script, runs = exec_plugin(tmp_path, ["revoked-token", k8s.token], lifetime_s=3600)
    cfg = write_kubeconfig(tmp_path / "kc", server=k8s.server, ca=k8s.ca_file, user=exec_user(script))
    client = await KubeClient.connect(kubeconfig=str(cfg))
    try:
        assert plugin_runs(runs) == 1
        assert await get_status(client) == 200
        assert plugin_runs(runs) == 2
        assert await get_status(client) == 200
        assert plugin_runs(runs) == 2
    finally:
        await client.close()


@aio
async def test_401_with_a_static_bad_token_is_returned(k8s: Any, tmp_path: Path) -> None:
    cfg = write_kubeconfig(tmp_path / "kc", server=k8s.server, ca=k8s.ca_file, user={"token": "wrong"})
    client = await KubeClient.connect(kubeconfig=str(cfg))
    try:
        assert await get_status(client) == 401
    finally:
        await client.close()


def test_failing_exec_plugin_is_a_config_error(k8s: Any, tmp_path: Path) -> None:
    script = tmp_path / "fail.sh"
    script.write_text("#!/bin/sh\necho 'no credentials for you' >&2\nexit 3\n")
    script.chmod(0o755)
    cfg = write_kubeconfig(tmp_path / "kc", server=k8s.server, ca=k8s.ca_file, user=exec_user(script))
    with pytest.raises(ConfigError) as err:
        uvloop.run(KubeClient.connect(kubeconfig=str(cfg)))
    assert "exec: process returned 3" in err.value.message
    assert "no credentials for you" in err.value.message
    assert "\n" not in err.value.message


# --------------------------------------------------------------------------- TLS

def test_insecure_skip_tls_verify(k8s: Any, tmp_path: Path) -> None:
    insecure = write_kubeconfig(tmp_path / "a", server=k8s.server, user={"token": k8s.token},
                                cluster_extra={"insecure-skip-tls-verify": True})
    assert uvloop.run(resolve_once(insecure, "po")).resource == "pods"
    unverified = write_kubeconfig(tmp_path / "b", server=k8s.server, user={"token": k8s.token})
    with pytest.raises(ResourceError) as err:
        uvloop.run(resolve_once(unverified, "po"))
    assert err.value.message == ("Unable to connect to the server: tls: failed to verify certificate: x509: "
                                 "certificate signed by unknown authority")


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def make_pki(d: Path) -> dict[str, Path]:
    """A CA, a server certificate for DNS name fastobs.test, and a client certificate."""
    p = {n: d / n for n in ("ca.crt", "ca.key", "srv.crt", "srv.key", "cli.crt", "cli.key", "ext")}
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=fastobs-test-ca",
            "-keyout", str(p["ca.key"]), "-out", str(p["ca.crt"]))
    server_ext = "subjectAltName=DNS:fastobs.test\nextendedKeyUsage=serverAuth"
    for name, cn, ext in (("srv", "fastobs.test", server_ext),
                          ("cli", "fastobs-client", "extendedKeyUsage=clientAuth")):
        csr = d / f"{name}.csr"
        p["ext"].write_text(ext + "\n")
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={cn}",
                "-keyout", str(p[f"{name}.key"]), "-out", str(csr))
        openssl("x509", "-req", "-in", str(csr), "-CA", str(p["ca.crt"]), "-CAkey", str(p["ca.key"]),
                "-CAcreateserial", "-days", "2", "-extfile", str(p["ext"]), "-out", str(p[f"{name}.crt"]))
    return p


async def mtls_server(pki: dict[str, Path]) -> tuple[web.AppRunner, int]:
    """A TLS server that requires a client certificate from the test CA and echoes its CN."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki["ca.crt"]))
    ctx.load_cert_chain(str(pki["srv.crt"]), str(pki["srv.key"]))
    ctx.verify_mode = ssl.CERT_REQUIRED

    async def whoami(request: web.Request) -> web.Response:
        peer = request.transport.get_extra_info("peercert") if request.transport else None
        subject = dict(x[0] for x in (peer or {}).get("subject", ()))
        return web.json_response({"cn": subject.get("commonName"),
                                  "auth": request.headers.get("Authorization")})

    app = web.Application()
    app.router.add_get("/whoami", whoami)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, port


def cert_exec_user(tmp_path: Path, pki: dict[str, Path]) -> dict[str, Any]:
    """An exec plugin that returns a client certificate instead of a token."""
    script = tmp_path / "cert-plugin.py"
    status = {"clientCertificateData": pki["cli.crt"].read_text(),
              "clientKeyData": pki["cli.key"].read_text()}
    script.write_text(f"""#!{os.path.realpath(sys.executable)}
import json
print(json.dumps({{"apiVersion": "client.authentication.k8s.io/v1", "kind": "ExecCredential",
                  "status": {json.dumps(status)}}}))
""")
    script.chmod(0o755)
    return exec_user(script)


@pytest.mark.parametrize("source", ["files", "inline-data", "exec-plugin"])
@aio
async def test_client_certificate_and_tls_server_name(tmp_path: Path, source: str) -> None:
    # The test apiserver trusts no client CA, so a real TLS server that demands a
    # client certificate stands in for it: the handshake is what is under test.
    import base64

    pki = make_pki(tmp_path)
    runner, port = await mtls_server(pki)
    try:
        def b64(p: Path) -> str:
            return base64.b64encode(p.read_bytes()).decode()

        user = {
            "files": {"client-certificate": str(pki["cli.crt"]), "client-key": str(pki["cli.key"])},
            "inline-data": {"client-certificate-data": b64(pki["cli.crt"]),
                            "client-key-data": b64(pki["cli.key"])},
            "exec-plugin": cert_exec_user(tmp_path, pki),
        }[source]
        # 127.0.0.1 is not in the server certificate: only tls-server-name makes it verify.
        cfg = write_kubeconfig(tmp_path / "kc", server=f"https://127.0.0.1:{port}", ca=pki["ca.crt"],
                               user=user, cluster_extra={"tls-server-name": "fastobs.test"})
        client = await KubeClient.connect(kubeconfig=str(cfg))
        try:
            resp = await client.request("GET", "/whoami")
            async with resp:
                assert resp.status == 200
                assert await resp.json() == {"cn": "fastobs-client", "auth": None}
        finally:
            await client.close()

        nocert = write_kubeconfig(tmp_path / "kc2", server=f"https://127.0.0.1:{port}", ca=pki["ca.crt"],
                                  user={"token": "t"}, cluster_extra={"tls-server-name": "fastobs.test"})
        client = await KubeClient.connect(kubeconfig=str(nocert))
        try:
            with pytest.raises(Exception):  # noqa: B017 - the handshake fails (alert or reset)
                await get_status(client, "/whoami")
        finally:
            await client.close()
    finally:
        await runner.cleanup()


def test_connecting_does_not_import_the_api_models(k8s: Any) -> None:
    # CoreV1Api and the model classes cost ~400 ms and ~20 MiB at start-up.
    code = ("import sys, uvloop, fastobs.kube as k\n"
            f"uvloop.run(k.KubeClient.connect(kubeconfig={str(k8s.kubeconfig)!r}))\n"
            "print(sorted(m for m in sys.modules if m.startswith("
            "('kubernetes.client.api.', 'kubernetes.client.models.'))))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[1]).stdout
    assert out.strip() == "[]"



# --------------------------------------------------------------------------- in-cluster

@aio
async def test_in_cluster_service_account(k8s: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import fastobs.kube

    sa = tmp_path / "serviceaccount"
    sa.mkdir()
    (sa / "token").write_text("not-yet-valid")
    shutil.copy(k8s.ca_file, sa / "ca.crt")
    (sa / "namespace").write_text("pod-namespace\n")
    monkeypatch.setattr(fastobs.kube, "_SA_DIR", str(sa))
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    host, port = k8s.server.removeprefix("https://").rsplit(":", 1)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", host)
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", port)
    client = await KubeClient.connect()
    try:
        assert client.namespace == "pod-namespace" and client.server == k8s.server
        assert await get_status(client) == 401
        # The kubelet rotated the projected token: the 401 makes the client read it again.
        (sa / "token").write_text(k8s.token)
        assert await get_status(client) == 200
    finally:
        await client.close()


# --------------------------------------------------------------------------- lazy imports

_CONNECT_AND_REPORT = """
import sys, uvloop, fastobs.kube as k
async def main():
    c = await k.KubeClient.connect(kubeconfig=sys.argv[1])
    try:
        r = await c.request("GET", "/api/v1/namespaces/default")
        async with r:
            await r.read()
            print(r.status, c.namespace, "kubernetes" in sys.modules)
    finally:
        await c.close()
uvloop.run(main())
"""


@pytest.mark.parametrize("kind", ["token", "token-file", "inline-ca", "exec-plugin"])
def test_only_exec_plugins_import_the_kubernetes_package(k8s: Any, tmp_path: Path, kind: str) -> None:
    # Importing the kubernetes package costs ~200 ms of start-up: a kubeconfig with a token
    # (or a client certificate, tested above through the same path) must not pay for it,
    # and must still authenticate against the real apiserver.
    import base64

    (tmp_path / "tok").write_text(k8s.token + "\n")
    ca: str | Path | None = k8s.ca_file
    extra: dict[str, Any] = {}
    user: dict[str, Any] = {"token": k8s.token}
    if kind == "token-file":
        user = {"tokenFile": "tok"}  # relative: resolved next to the kubeconfig, as kubectl does
    elif kind == "inline-ca":
        data = base64.b64encode(Path(k8s.ca_file).read_bytes()).decode()
        ca, extra = None, {"certificate-authority-data": data}
    elif kind == "exec-plugin":
        script, _ = exec_plugin(tmp_path, [k8s.token], lifetime_s=3600)
        user = exec_user(script)
    cfg = write_kubeconfig(tmp_path / "kc", server=k8s.server, ca=ca, user=user, namespace="ctx-ns",
                           cluster_extra=extra)
    out = subprocess.run([sys.executable, "-c", _CONNECT_AND_REPORT, str(cfg)], capture_output=True,
                         text=True, cwd=Path(__file__).resolve().parents[1], timeout=120)
    print(kind, out.stdout.strip(), out.stderr.strip()[-300:])
    assert out.returncode == 0, out.stderr
    status, namespace, imported = out.stdout.split()
    assert (status, namespace) == ("200", "ctx-ns")
    assert imported == ("True" if kind == "exec-plugin" else "False")


def test_kubeconfig_files_merge_first_wins_like_kubectl(tmp_path: Path) -> None:
    from fastobs import credentials

    a = tmp_path / "a"
    a.write_text(json.dumps({
        "current-context": "one",
        "contexts": [{"name": "one", "context": {"cluster": "c", "user": "u", "namespace": "n1"}}],
        "clusters": [{"name": "c", "cluster": {"server": "https://first:6443/"}}],
    }))
    b = tmp_path / "b"
    b.write_text(json.dumps({
        "current-context": "two",
        "contexts": [{"name": "two", "context": {"cluster": "c", "user": "u"}}],
        "clusters": [{"name": "c", "cluster": {"server": "https://second:6443"}}],
        "users": [{"name": "u", "user": {"username": "ann", "password": "pw"}}],
    }))
    loaded = credentials.load_kubeconfig(f"{a}:{b}", "")
    assert loaded is not None
    cfg, ns = loaded
    assert (cfg.host, ns) == ("https://first:6443", "n1")
    assert cfg.auth_settings() == {"BearerToken": {"value": "Basic YW5uOnB3"}}
    cfg2, ns2 = credentials.load_kubeconfig(f"{a}:{b}", "two") or (None, None)
    assert cfg2 is not None and (cfg2.host, ns2) == ("https://first:6443", "")
    # What the fast path does not know goes to the kubernetes loader, which words the errors.
    b.write_text(json.dumps({"current-context": "x", "contexts": [{"name": "x", "context": {
        "cluster": "c", "user": "u"}}], "clusters": [{"name": "c", "cluster": {"server": "https://s"}}],
        "users": [{"name": "u", "user": {"auth-provider": {"name": "oidc"}}}]}))
    assert credentials.load_kubeconfig(str(b), "") is None
    (tmp_path / "bad").write_text("clusters: [\n")
    assert credentials.load_kubeconfig(str(tmp_path / "bad"), "") is None
    assert credentials.load_kubeconfig(str(a), "missing") is None


def test_aiohttp_default_tls_contexts_get_the_system_cas_before_a_plain_http_server(tmp_path: Path) -> None:
    """Importing fastobs.kube skips aiohttp's two loads of the system CA bundle at its
    import (start-up time); every https request gets fastobs's own context, and a plain-http
    server (whose requests may still use aiohttp's default context, through an https proxy)
    gets the bundle loaded before its first request. Fresh interpreters: the import is what
    is tested."""
    probe = (
        "import asyncio, ssl, sys\n"
        "from fastobs.kube import KubeClient\n"
        "from aiohttp import connector\n"
        "before = connector._SSL_CONTEXT_VERIFIED.cert_store_stats()['x509_ca']\n"
        "system = ssl.create_default_context().cert_store_stats()['x509_ca']\n"
        "async def main():\n"
        "    c = await KubeClient.connect(server=sys.argv[1])\n"
        "    await c.close()\n"
        "asyncio.run(main())\n"
        "after = connector._SSL_CONTEXT_VERIFIED.cert_store_stats()['x509_ca']\n"
        "print(before, system, after)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"} | {"HOME": str(tmp_path)}
    for server, loads in (("http://127.0.0.1:1", True), ("https://127.0.0.1:1", False)):
        res = subprocess.run([sys.executable, "-c", probe, server], env=env, capture_output=True,
                             text=True, timeout=60)
        assert res.returncode == 0, res.stderr
        before, system, after = map(int, res.stdout.split())
        print(f"{server}: aiohttp's default context holds {before} CAs after the import, {after} "
              f"after connect; a default context holds {system}")
        assert system > 0, "the system has no CA bundle to test with"
        assert before == 0
        assert after == (system if loads else 0)
