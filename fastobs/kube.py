"""Kube: the authenticated HTTP session to the apiserver, and resource discovery.

Where it sits: the first stage of the parent after ``cli``. ``daemon`` calls
:meth:`KubeClient.connect` with the connection flags, :meth:`KubeClient.resolve` turns
the resource argument (``po``, ``deployments.apps``, a CRD) into a :class:`Resource`,
and ``source`` lists and watches through :meth:`KubeClient.request`.

In: a kubeconfig (``--kubeconfig``, ``KUBECONFIG``, ``~/.kube/config``) or the
in-cluster service account. Out: raw ``aiohttp`` responses; nothing here parses
objects or builds the ``kubernetes`` package's model classes (their import alone costs
~400 ms): only ``kubernetes.config`` and ``Configuration`` are used, to load credentials.

Invariant: authentication headers are fetched fresh for every request (the
credential loader's refresh hook re-runs exec plugins and re-reads token files when
they expire), and a 401 reloads the credentials from scratch and retries once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any


@contextlib.contextmanager
def _system_cas_deferred() -> Iterator[None]:
    """While aiohttp is imported, its two default TLS contexts skip loading the system's CA
    bundle: each load parses ~140 certificates (50-300 ms of start-up, twice). fastobs
    gives every https request its own context (``_Credentials._build_ssl``), so the
    defaults serve only a plain-http server's requests (an https proxy's handshake), and
    :func:`_load_deferred_cas` loads the bundle into them before any such request."""
    original = ssl.SSLContext.set_default_verify_paths
    ssl.SSLContext.set_default_verify_paths = lambda self: None  # type: ignore[method-assign]
    try:
        yield
    finally:
        ssl.SSLContext.set_default_verify_paths = original  # type: ignore[method-assign]


with _system_cas_deferred():
    import aiohttp  # noqa: E402 - first imported here (kube comes before source and the others)
import orjson  # noqa: E402

_DEFERRED_CAS = threading.Lock()
_deferred_cas_loaded = False


def _load_deferred_cas() -> None:
    """Load the system CA bundle into aiohttp's default contexts, as its import would have."""
    global _deferred_cas_loaded
    with _DEFERRED_CAS:
        if _deferred_cas_loaded:
            return
        from aiohttp import connector

        for ctx in (connector._SSL_CONTEXT_VERIFIED, connector._SSL_CONTEXT_UNVERIFIED):
            if ctx is not None:
                ctx.set_default_verify_paths()
        _deferred_cas_loaded = True


from fastobs import __version__, credentials  # noqa: E402
from fastobs.credentials import Overrides  # noqa: E402
from fastobs.discovery import (  # noqa: E402
    AGGREGATED_ACCEPT,
    Served,
    from_aggregated,
    from_resource_list,
    match,
)
from fastobs.discovery import Resource as Resource  # noqa: E402 - re-exported: source, lease, daemon
from fastobs.errors import ConfigError, KubectlError, ResourceError  # noqa: E402
from fastobs.kube_errors import Endpoint, status_error, unreachable  # noqa: E402
from fastobs.prefetch import Prefetch  # noqa: E402

log = logging.getLogger(__name__)

_SA_DIR = credentials.SA_DIR
_DISCOVERY_TIMEOUT = 30.0
"""Discovery is a start-up step: a server that does not answer it in 30 s is down."""
_CONNECT_TIMEOUT = 30.0
HEADERS_TIMEOUT = 30.0
"""The wait for a response's headers when the caller names none (discovery): without a
deadline, a request sent into a path that stopped forwarding (a half-open connection, a
middlebox that completes handshakes and forwards nothing) waits forever."""


class ResponseTimeout(TimeoutError):
    """A request got no response headers within its deadline."""


class _Credentials:
    """Loads a kubeconfig or the in-cluster service account into a ``Configuration``.

    Loading is synchronous (exec plugins are subprocesses); callers run it in a thread.
    """

    def __init__(self, kubeconfig: str, context: str, overrides: Overrides) -> None:
        self._kubeconfig = kubeconfig
        self._context = context
        self.overrides = overrides
        self.cfg: Any = None
        self.context_namespace = ""
        self.ssl: ssl.SSLContext | bool = True
        self._ssl_files: tuple[Any, ...] = ()
        # Concurrent requests must not run an expired exec plugin several times at once.
        self._auth_lock = threading.Lock()

    def load(self) -> None:
        """(Re)load everything; raises ConfigError with a one-line message."""
        try:
            self._load()
        except ConfigError:
            raise
        except Exception as exc:  # the loader raises ConfigException, KeyError, yaml errors...
            raise ConfigError(f"invalid configuration: {_one_line(exc)}") from None
        self._build_ssl()

    def adopt(self, cfg: credentials.Config, namespace: str, tls: ssl.SSLContext | None) -> None:
        """Take credentials ``prefetch`` loaded (``credentials.load_fast``, as ``load`` would
        have) with the TLS context it built from them."""
        self.cfg, self.context_namespace = cfg, namespace
        if tls is None:
            self._build_ssl()
        else:
            self.ssl, self._ssl_files = tls, (cfg.ssl_ca_cert, cfg.cert_file, cfg.key_file, cfg.verify_ssl)

    def _load(self) -> None:
        # Tokens, client certificates and the service account are read by ``credentials``;
        # only what needs the kubernetes package's loader (exec plugins, auth providers)
        # imports it (~200 ms of start-up).
        cfg: Any = credentials.Config()
        paths = credentials.kubeconfig_paths(self._kubeconfig)
        if self._kubeconfig and not os.path.exists(os.path.expanduser(self._kubeconfig)):
            raise ConfigError(f"stat {self._kubeconfig}: no such file or directory")
        if paths and credentials.any_exists(paths):
            fast = credentials.load_kubeconfig(paths, self._context)
            if fast is not None:
                cfg, self.context_namespace = fast
            else:
                cfg = _configuration()
                self._load_kubeconfig(cfg, paths)
        elif os.environ.get("KUBERNETES_SERVICE_HOST"):
            fast = credentials.load_incluster(_SA_DIR)
            if fast is not None:
                cfg, self.context_namespace = fast
            else:
                cfg = _configuration()
                self._load_incluster(cfg)
        elif self.overrides.server:
            pass  # kubectl accepts --server (and --token) without any kubeconfig
        elif paths:
            raise ConfigError(f"no kubeconfig file found at {paths}")
        else:
            raise ConfigError(
                "no configuration has been provided: use --kubeconfig, set KUBECONFIG, "
                "or run inside a cluster"
            )
        self.overrides.apply(cfg)
        if not cfg.host:
            raise ConfigError("invalid configuration: no server found for the cluster")
        self.cfg = cfg

    def _load_kubeconfig(self, cfg: Any, paths: str) -> None:
        from kubernetes.config.kube_config import KubeConfigLoader, KubeConfigMerger

        for path in paths.split(os.pathsep):
            _check_kubeconfig_file(path)
        merged = KubeConfigMerger(paths)  # type: ignore[no-untyped-call]
        if merged.config is None:
            raise ConfigError(f"invalid configuration: no configuration found in {paths}")
        context = self._context or merged.config.safe_get("current-context") or ""
        if not context:
            raise ConfigError("invalid configuration: no current context is set (use --context)")
        if "contexts" not in merged.config or merged.config["contexts"].get_with_name(context, True) is None:
            raise ConfigError(f'context "{context}" does not exist')
        loader = KubeConfigLoader(  # type: ignore[no-untyped-call]
            config_dict=merged.config, active_context=context, config_base_path=None)
        loader.load_and_set(cfg)  # type: ignore[no-untyped-call]
        user = loader._user  # the loader exposes no accessor for the active user
        if user is not None and "exec" in user and "token" not in loader.__dict__ and not cfg.cert_file:
            raise ConfigError(_exec_failure(loader, user))
        self.context_namespace = loader.current_context["context"].get("namespace") or ""

    def _load_incluster(self, cfg: Any) -> None:
        from kubernetes.config.incluster_config import InClusterConfigLoader

        # The loader re-reads the (projected, rotating) token file every minute.
        loader = InClusterConfigLoader(  # type: ignore[no-untyped-call]
            token_filename=f"{_SA_DIR}/token", cert_filename=f"{_SA_DIR}/ca.crt", try_refresh_token=True)
        loader.load_and_set(cfg)  # type: ignore[no-untyped-call]
        try:
            with open(f"{_SA_DIR}/namespace", encoding="utf-8") as f:
                self.context_namespace = f.read().strip()
        except OSError:
            self.context_namespace = ""

    def _build_ssl(self) -> None:
        cfg = self.cfg
        files = (cfg.ssl_ca_cert, cfg.cert_file, cfg.key_file, cfg.verify_ssl)
        if files == self._ssl_files:
            return  # same files: keep the context so pooled connections stay reusable
        if not cfg.host.startswith("https"):
            _load_deferred_cas()  # aiohttp's default context may serve an https proxy
            self.ssl, self._ssl_files = True, files
            return
        try:
            ctx = credentials.tls_context(cfg)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"invalid TLS configuration: {_one_line(exc)}") from None
        self.ssl, self._ssl_files = ctx, files

    @property
    def may_block(self) -> bool:
        """Whether fetching the header can run a plugin or read a file (then: in a thread)."""
        return self.cfg.refresh_api_key_hook is not None

    def authorization(self) -> str | None:
        """The Authorization header value, refreshed (exec plugin, token file) if expired."""
        with self._auth_lock:
            value: str | None = self.cfg.auth_settings().get("BearerToken", {}).get("value")
        return value

    async def authorization_async(self) -> str | None:
        if self.may_block:
            return await asyncio.to_thread(self.authorization)
        return self.authorization()


def _configuration() -> Any:
    from kubernetes.client import Configuration  # lazy: ~200 ms, only the loader's users pay it

    return Configuration()


def _exec_failure(loader: Any, user: Any) -> str:
    """Re-run a failed exec plugin to get its error (the loader only logs it)."""
    from kubernetes.config.exec_provider import ExecProvider

    try:
        plugin = ExecProvider(user["exec"], None, loader._cluster)  # type: ignore[no-untyped-call]
        plugin.run()  # type: ignore[no-untyped-call]
    except Exception as exc:
        return f"getting credentials: {_one_line(exc)}"
    return "getting credentials: exec plugin returned neither a token nor a client certificate"


_GO_JSON_TYPES = {str: "string", list: "array", int: "number", float: "number", bool: "bool"}
_TYPE_META = ('struct { APIVersion string "json:\\"apiVersion,omitempty\\""; '
              'Kind string "json:\\"kind,omitempty\\"" }')
"""client-go's first decode of a kubeconfig file, into apimachinery's TypeMeta."""


def _check_kubeconfig_file(path: str) -> None:
    """A kubeconfig file that is not YAML, or not a mapping, in kubectl's words (the
    ``kubernetes`` loader fails on it with a Python error about item assignment)."""
    import yaml  # type: ignore[import-untyped]  # the kubernetes package's own dependency

    full = os.path.expanduser(path)
    if not path or not os.path.exists(full):
        return
    try:
        with open(full, encoding="utf-8") as f:
            doc = yaml.safe_load(f)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f'error loading config file "{path}": {_one_line(exc)}') from None
    go_type = _GO_JSON_TYPES.get(type(doc))
    if go_type is not None:
        raise ConfigError(f'error loading config file "{path}": couldn\'t get version/kind; json parse '
                          f"error: json: cannot unmarshal {go_type} into Go value of type {_TYPE_META}")


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


class KubeClient:
    """An authenticated HTTP session to one apiserver."""

    def __init__(self, creds: _Credentials, session: aiohttp.ClientSession, namespace: str,
                 request_timeout: float) -> None:
        self._creds = creds
        self._session = session
        self._host = creds.cfg.host.rstrip("/")
        self._server_hostname: str | None = creds.cfg.tls_server_name or None
        self._proxy: str | None = creds.cfg.proxy or None
        self._request_timeout = request_timeout
        self.headers_timeout = min(HEADERS_TIMEOUT, request_timeout or HEADERS_TIMEOUT)
        """The deadline up to the response headers of requests that name none."""
        self._served: list[Served] | None = None
        self._reload_lock = asyncio.Lock()
        self.namespace = namespace

    @classmethod
    async def connect(cls, *, kubeconfig: str = "", context: str = "", namespace: str = "",
                      request_timeout: float = 0.0, server: str = "", token: str = "",
                      insecure_skip_tls_verify: bool = False,
                      prefetched: Prefetch | None = None) -> KubeClient:
        """Load credentials (kubeconfig, else in-cluster) and open the HTTP session.

        ``server``, ``token`` and ``insecure_skip_tls_verify`` are kubectl's global flags
        of the same names and override the kubeconfig. ``prefetched``: the credentials and
        discovery ``prefetch`` got with the same flags, taken over instead of loaded again.
        """
        creds = _Credentials(kubeconfig, context, Overrides(server, token, insecure_skip_tls_verify))
        if prefetched is None:
            await asyncio.to_thread(creds.load)
        else:
            creds.adopt(prefetched.cfg, prefetched.context_namespace, prefetched.tls)
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300)
        session = aiohttp.ClientSession(
            connector=connector, trust_env=True, auto_decompress=True, read_bufsize=1 << 20,
            headers={"User-Agent": f"fastobs/{__version__}"},
        )
        client = cls(creds, session, namespace or creds.context_namespace or "default", request_timeout)
        if prefetched is not None:
            client._served = list(prefetched.served)
        return client

    @property
    def server(self) -> str:
        return str(self._host)

    async def close(self) -> None:
        await self._session.close()

    def default_timeout(self) -> aiohttp.ClientTimeout:
        """Timeout for non-streaming requests: ``--request-timeout`` (0 = none) plus a connect bound."""
        total = self._request_timeout or None
        return aiohttp.ClientTimeout(total=total, sock_connect=_CONNECT_TIMEOUT)

    async def request(self, method: str, path: str, params: dict[str, str] | None = None, *,
                      timeout: aiohttp.ClientTimeout | None = None,  # noqa: ASYNC109 - per-request HTTP timeouts
                      headers_timeout: float = 0.0,
                      body: bytes | None = None,
                      ) -> aiohttp.ClientResponse:
        """Send one request with fresh credentials; on 401 reload them and retry once.

        The response headers must arrive within ``headers_timeout`` seconds of sending (0:
        :attr:`headers_timeout`; ``--request-timeout`` caps either), however the connection
        behaves, else :class:`ResponseTimeout`: aiohttp's own timeouts leave a streaming
        request without any bound until its headers come. ``body`` is sent as JSON (the Lease
        writes). The caller reads and closes the response. Connection errors propagate as
        ``aiohttp.ClientError`` / ``TimeoutError``.
        """
        deadline = headers_timeout or self.headers_timeout
        if self._request_timeout:
            deadline = min(deadline, self._request_timeout)
        resp = await self._send(method, path, params, timeout, deadline, body)
        if resp.status != 401:
            return resp
        resp.release()
        await self._reload_credentials()
        return await self._send(method, path, params, timeout, deadline, body)

    async def _send(self, method: str, path: str, params: dict[str, str] | None,
                    timeout: aiohttp.ClientTimeout | None,  # noqa: ASYNC109
                    deadline: float, body: bytes | None = None) -> aiohttp.ClientResponse:
        creds = self._creds
        auth = await creds.authorization_async()
        headers = {"Accept": "application/json"}
        if auth:
            headers["Authorization"] = auth
        if body is not None:
            headers["Content-Type"] = "application/json"
        async with _headers_deadline(deadline):
            return await self._session.request(
                method, self._host + path, params=params, headers=headers, ssl=creds.ssl,
                server_hostname=self._server_hostname, proxy=self._proxy,
                timeout=timeout or self.default_timeout(), data=body,
            )

    async def _reload_credentials(self) -> None:
        """A 401 means the credentials went stale (rotated token, expired plugin output)."""
        async with self._reload_lock:
            log.debug("reloading credentials after 401 Unauthorized")
            fresh = _Credentials(self._creds._kubeconfig, self._creds._context, self._creds.overrides)
            fresh._ssl_files, fresh.ssl = self._creds._ssl_files, self._creds.ssl
            try:
                await asyncio.to_thread(fresh.load)
            except ConfigError as exc:
                log.warning("could not reload credentials: %s", exc.message)
                return
            self._creds = fresh

    def _endpoint(self) -> Endpoint:
        cfg = self._creds.cfg
        return Endpoint(url=self._host, server_name=self._server_hostname, proxy=self._proxy,
                        ca_file=cfg.ssl_ca_cert or None, verify=bool(cfg.verify_ssl),
                        timeout=self._request_timeout)

    # ----------------------------------------------------------------- discovery

    async def resolve(self, arg: str) -> Resource:
        """Resolve a resource argument like kubectl (plural, singular, kind, short name, ``r.group``)."""
        typed, _, group = arg.partition(".")  # not stripped: oc looks " pods" up as it is
        if not typed and not group:
            raise ResourceError("unknown resource argument")
        if not typed:  # client-go's REST mapper on a group without a resource
            raise ResourceError(f"a resource must be present, got: {group}/, Resource=")
        served = await self._discover()
        found = match(served, typed.lower(), group.lower())
        if found is None:
            where = f' in group "{group}"' if group else ""
            raise KubectlError(f'the server doesn\'t have a resource type "{typed}"{where}')
        return found

    async def _discover(self) -> list[Served]:
        if self._served is None:
            try:
                self._served = await self._discover_uncached()
            except ResourceError:
                raise
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                raise KubectlError(await unreachable(exc, self._endpoint())) from None
        return self._served

    async def _discover_uncached(self) -> list[Served]:
        core, groups = await asyncio.gather(self._get_json("/api", AGGREGATED_ACCEPT),
                                            self._get_json("/apis", AGGREGATED_ACCEPT))
        served: list[Served] = []
        for doc, prefix in ((core, "/api"), (groups, "/apis")):
            if doc.get("kind") == "APIGroupDiscoveryList":
                served.extend(from_aggregated(doc))
            else:
                served.extend(await self._legacy(doc, prefix))
        return served

    async def _legacy(self, doc: dict[str, Any], prefix: str) -> list[Served]:
        """Per-group-version discovery for servers without aggregated discovery."""
        if prefix == "/api":
            gvs = [("", v, f"/api/{v}") for v in doc.get("versions", [])]
        else:
            gvs = []
            for g in doc.get("groups", []):
                preferred = g.get("preferredVersion", {}).get("version", "")
                versions = [v["version"] for v in g.get("versions", [])]
                versions.sort(key=preferred.__ne__)  # stable: the preferred version first
                gvs.extend((g["name"], v, f"/apis/{g['name']}/{v}") for v in versions)
        docs = await asyncio.gather(*(self._get_json(p, "application/json", tolerate=True)
                                      for _, _, p in gvs))
        out: list[Served] = []
        for (group, version, _), rl in zip(gvs, docs, strict=True):
            out.extend(from_resource_list(group, version, rl.get("resources", [])))
        return out

    async def _get_json(self, path: str, accept: str, tolerate: bool = False,
                        retried: bool = False) -> dict[str, Any]:
        """GET a discovery document; ``tolerate`` skips an unavailable group (kubectl warns),
        but not a 401: credentials the server refuses are refused everywhere."""
        creds = self._creds
        auth = await creds.authorization_async()
        headers = {"Accept": accept}
        if auth:
            headers["Authorization"] = auth
        timeout = aiohttp.ClientTimeout(total=self._request_timeout or _DISCOVERY_TIMEOUT)
        async with _headers_deadline(self.headers_timeout):
            resp = await self._session.get(self._host + path, headers=headers, ssl=creds.ssl,
                                           server_hostname=self._server_hostname, proxy=self._proxy,
                                           timeout=timeout)
        async with resp:
            body = await resp.read()
            if resp.status == 401 and not retried:
                await self._reload_credentials()
                return await self._get_json(path, accept, tolerate, retried=True)
            if resp.status != 200:
                if tolerate and resp.status != 401:
                    log.warning("discovery of %s failed: HTTP %d", path, resp.status)
                    return {}
                raise KubectlError(status_error(resp.status, body, resp.content_type))
        try:
            doc: dict[str, Any] = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise ResourceError(f"discovery of {path} returned invalid JSON") from None
        return doc


@contextlib.asynccontextmanager
async def _headers_deadline(seconds: float) -> AsyncIterator[None]:
    """Turn the expiry of ``seconds`` into :class:`ResponseTimeout`."""
    try:
        async with asyncio.timeout(seconds) as cm:
            yield
    except TimeoutError:
        if cm.expired():
            raise ResponseTimeout(f"no response headers within {seconds:g}s") from None
        raise


def status_message(status: int, body: bytes) -> str:
    """The apiserver's Status message for an error response, else the HTTP status."""
    try:
        doc = orjson.loads(body)
        if isinstance(doc, dict) and doc.get("message"):
            return str(doc["message"])
    except orjson.JSONDecodeError:
        pass
    text = body.decode("utf-8", "replace").strip()
    return f"HTTP {status}" + (f": {text[:200]}" if text else "")
