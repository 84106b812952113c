"""Credentials: kubeconfig and in-cluster credentials without the ``kubernetes`` package.

Where it sits: in the parent, under ``kube``'s credential loader. In: the kubeconfig
paths and context (or the in-cluster service account). Out: a :class:`Config` with the
fields ``kube`` reads (host, CA, client certificate, token, TLS options), or None when
the chosen credentials need the ``kubernetes`` package's loader (exec plugins, auth
providers, anything unusual): ``kube`` then falls back to it.

Why: importing the ``kubernetes`` package costs about 200 ms of start-up (its
``__init__`` imports the whole client), while a kubeconfig with a token or a client
certificate, and the in-cluster service account, need only a YAML parse and a file read.
Only users of exec plugins and auth providers pay for the package.

Invariant: the fast path accepts only what it reads exactly as the ``kubernetes``
loader does (kubectl's merge rule: the first file to set a value wins); anything it does
not recognise returns None, so error messages and unusual setups stay the loader's.
"""

from __future__ import annotations

import base64
import os
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

_Hook = Callable[["Config"], None]

SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


class Config:
    """The subset of ``kubernetes.client.Configuration`` that ``kube`` uses."""

    def __init__(self) -> None:
        self.host = ""
        self.ssl_ca_cert: str | None = None
        self.cert_file: str | None = None
        self.key_file: str | None = None
        self.verify_ssl = True
        self.tls_server_name: str | None = None
        self.proxy: str | None = None
        self.api_key: dict[str, str] = {}
        self.refresh_api_key_hook: _Hook | None = None

    def auth_settings(self) -> dict[str, dict[str, str]]:
        """Like Configuration.auth_settings(): the refresh hook runs first."""
        if self.refresh_api_key_hook is not None:
            self.refresh_api_key_hook(self)
        value = self.api_key.get("BearerToken")
        return {"BearerToken": {"value": value}} if value else {}


@dataclass(frozen=True)
class Overrides:
    """kubectl's global flags that win over the kubeconfig: --server, --token,
    --insecure-skip-tls-verify."""

    server: str = ""
    token: str = ""
    insecure_skip_tls_verify: bool = False

    def apply(self, cfg: Any) -> None:
        """Apply the flags to ``cfg`` (a :class:`Config` or the package's ``Configuration``)."""
        if self.server:
            cfg.host = self.server.rstrip("/")
        if self.token:
            # A flag token replaces the kubeconfig's credentials (plugins included), like kubectl.
            cfg.api_key = {"BearerToken": f"Bearer {self.token}"}
            cfg.refresh_api_key_hook = None
        if self.insecure_skip_tls_verify:
            cfg.verify_ssl = False
            cfg.ssl_ca_cert = None


def kubeconfig_paths(kubeconfig: str) -> str:
    """The kubeconfig files to read, ``os.pathsep``-separated: ``--kubeconfig``, else
    ``$KUBECONFIG``, else ``~/.kube/config`` when it exists; empty when none is named."""
    paths = kubeconfig or os.environ.get("KUBECONFIG", "")
    if not paths and os.path.exists(os.path.expanduser("~/.kube/config")):
        paths = os.path.expanduser("~/.kube/config")
    return paths


def any_exists(paths: str) -> bool:
    return any(p and os.path.exists(os.path.expanduser(p)) for p in paths.split(os.pathsep))


def load_fast(kubeconfig: str, context: str, overrides: Overrides) -> tuple[Config, str] | None:
    """What ``kube``'s loader ends up with (the flags' overrides applied), when it would get
    it from this module; None wherever it would use the ``kubernetes`` package or raise an
    error instead (those words are ``kube``'s alone: this function never raises)."""
    try:
        if kubeconfig and not os.path.exists(os.path.expanduser(kubeconfig)):
            return None
        paths = kubeconfig_paths(kubeconfig)
        if paths and any_exists(paths):
            fast = load_kubeconfig(paths, context)
        elif os.environ.get("KUBERNETES_SERVICE_HOST"):
            fast = load_incluster(SA_DIR)
        else:
            return None  # --server alone, or no configuration: kube says what it makes of it
    except Exception:  # a token file that cannot be read, bad base64...: kube words it
        return None
    if fast is None:
        return None
    cfg, namespace = fast
    overrides.apply(cfg)
    return (cfg, namespace) if cfg.host else None


def tls_context(cfg: Config) -> ssl.SSLContext:
    """The TLS context of an https server: its CA (else the system's), the client
    certificate, and no verification with ``insecure-skip-tls-verify``. Raises OSError or
    ssl.SSLError for files that cannot be loaded."""
    ctx = ssl.create_default_context(cafile=cfg.ssl_ca_cert or None)
    if cfg.cert_file:
        ctx.load_cert_chain(cfg.cert_file, cfg.key_file or None)
    if not cfg.verify_ssl:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def load_kubeconfig(paths: str, context: str) -> tuple[Config, str] | None:
    """(config, the context's namespace) for a token, token-file, basic-auth or
    client-certificate user; None when the kubernetes loader must do it."""
    docs = []
    for path in paths.split(os.pathsep):
        path = os.path.expanduser(path)
        if not path or not os.path.exists(path):
            continue
        doc = _yaml(path)
        if doc is None:
            return None
        docs.append((path, doc))
    if not docs:
        return None
    current = context or next((d.get("current-context") for _, d in docs if d.get("current-context")), "")
    ctx, _ = _named(docs, "contexts", "context", current)
    if not current or ctx is None:
        return None
    cluster, cluster_dir = _named(docs, "clusters", "cluster", ctx.get("cluster"))
    user, user_dir = _named(docs, "users", "user", ctx.get("user"))
    if cluster is None or not isinstance(cluster.get("server"), str):
        return None
    user = user or {}
    if set(user) - _USER_KEYS or set(cluster) - _CLUSTER_KEYS:
        return None  # exec, auth-provider, impersonation...: the kubernetes loader's job
    cfg = Config()
    cfg.host = cluster["server"].rstrip("/")
    cfg.verify_ssl = not cluster.get("insecure-skip-tls-verify", False)
    cfg.tls_server_name = cluster.get("tls-server-name") or None
    cfg.proxy = cluster.get("proxy-url") or None
    if cfg.verify_ssl:
        cfg.ssl_ca_cert = _file(cluster, "certificate-authority", cluster_dir)
    cfg.cert_file = _file(user, "client-certificate", user_dir)
    cfg.key_file = _file(user, "client-key", user_dir)
    token = user.get("token")
    if not token and user.get("tokenFile"):
        with open(_resolve(user["tokenFile"], user_dir), encoding="utf-8") as f:
            token = f.read().strip()
    if token:
        cfg.api_key = {"BearerToken": f"Bearer {token}"}
    elif user.get("username") and user.get("password"):
        basic = base64.b64encode(f"{user['username']}:{user['password']}".encode()).decode()
        cfg.api_key = {"BearerToken": f"Basic {basic}"}
    namespace = ctx.get("namespace") or ""
    return cfg, namespace if isinstance(namespace, str) else ""


def load_incluster(sa_dir: str) -> tuple[Config, str] | None:
    """The pod's service account: the token file is read again once a minute (the kubelet
    rotates projected tokens), like the kubernetes loader with ``try_refresh_token``."""
    host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT")
    token_path, ca_path = f"{sa_dir}/token", f"{sa_dir}/ca.crt"
    if not host or not port or not os.path.isfile(token_path) or not os.path.isfile(ca_path):
        return None
    cfg = Config()
    cfg.host = f"https://{f'[{host}]' if ':' in host else host}:{port}"
    cfg.ssl_ca_cert = ca_path
    read_at = [0.0]

    def refresh(c: Config) -> None:
        if time.monotonic() - read_at[0] < 60 and c.api_key:
            return
        with open(token_path, encoding="utf-8") as f:
            token = f.read().strip()
        read_at[0] = time.monotonic()
        c.api_key = {"BearerToken": f"Bearer {token}"} if token else {}

    refresh(cfg)
    cfg.refresh_api_key_hook = refresh
    try:
        with open(f"{sa_dir}/namespace", encoding="utf-8") as f:
            namespace = f.read().strip()
    except OSError:
        namespace = ""
    return cfg, namespace


# ------------------------------------------------------------------ kubeconfig details

_USER_KEYS = {"token", "tokenFile", "client-certificate", "client-certificate-data", "client-key",
              "client-key-data", "username", "password"}
_CLUSTER_KEYS = {"server", "certificate-authority", "certificate-authority-data",
                 "insecure-skip-tls-verify", "tls-server-name", "proxy-url", "extensions"}


def _yaml(path: str) -> dict[str, Any] | None:
    import yaml  # type: ignore[import-untyped]  # ~10 ms; the kubernetes package costs 20x

    try:
        with open(path, encoding="utf-8") as f:
            doc = yaml.load(f, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return None  # the kubernetes loader words the error
    if doc is None:
        return {}
    return doc if isinstance(doc, dict) else None


def _named(docs: list[tuple[str, dict[str, Any]]], section: str, field: str,
           name: object) -> tuple[dict[str, Any] | None, str]:
    """The first entry called ``name`` in ``section`` over all files (kubectl's merge
    rule), and the directory of the file it came from (relative paths are resolved there)."""
    if not isinstance(name, str) or not name:
        return None, ""
    for path, doc in docs:
        entries = doc.get(section) or []
        if not isinstance(entries, list):
            return None, ""
        for entry in entries:
            if isinstance(entry, dict) and entry.get("name") == name:
                value = entry.get(field)
                return (value if isinstance(value, dict) else None), os.path.dirname(path)
    return None, ""


def _resolve(path: str, base: str) -> str:
    path = os.path.expanduser(path)
    return path if os.path.isabs(path) else os.path.join(base, path)


def _file(entry: dict[str, Any], key: str, base: str) -> str | None:
    """A file path for ``key``, writing ``key-data`` (base64) to a private file when given."""
    data = entry.get(f"{key}-data")
    if data:
        return _data_file(base64.b64decode(data))
    path = entry.get(key)
    return _resolve(path, base) if path else None


_tmpdir: str | None = None


def _data_file(content: bytes) -> str:
    """Inline certificate data as a file (ssl loads certificates from files), removed at exit."""
    import atexit  # only inline certificate data needs these (a few ms before the first request)
    import shutil
    import tempfile

    global _tmpdir
    if _tmpdir is None:
        _tmpdir = tempfile.mkdtemp(prefix="fastobs-creds-")
        atexit.register(shutil.rmtree, _tmpdir, True)
    fd, path = tempfile.mkstemp(dir=_tmpdir)
    with os.fdopen(fd, "wb") as f:
        f.write(content)
    return path
