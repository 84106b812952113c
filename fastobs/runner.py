"""Runner: turn one job into one command invocation, exactly as ``oc observe`` builds it.

Where it sits: inside a worker, called by ``worker`` for each RUN frame (at most
``--concurrency`` at once). In: the job header and the raw object JSON. Out: a result
header (status, attempts, timings, the printed header line) plus the captured stdout and
stderr of the command.

Invocation (oc-compatible, see docs/usage.md): argv is ``[cmd args...] [namespace] name
[template output]``; the environment gets ``--type-env-var`` and ``--object-env-var``
(kubectl's JSON encoding); stdin is /dev/null unless the object is sent on stdin.

Invariants: the command is executed directly, never through a shell, so object data can
only ever become single argv elements; every command runs in its own process group and is
killed as a group on timeout; output is captured into memfds (grouped mode), so a
grandchild that keeps the output open cannot hold the worker up; a template that fails for
an object (any language) stops fastobs with an error that names the object's key but does
not quote the object below ``--loglevel 8`` (:func:`template_failure`).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import tempfile
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson

from . import spawn
from .encoding import kubectl_json
from .errors import TemplateError
from .fencing import FENCED, Fence
from .gocompat import go_quote
from .header import header_line, rfc3339_local
from .protocol import INVALID_OBJECT, Done, Job
from .settings import QUOTE_OBJECT_VERBOSITY, RunSettings

if TYPE_CHECKING:
    from .templates import Template

LineSink = Callable[[int, bytes], None]
"""Stream mode: receives (fd, one line of output) as the command prints it."""
BeginSink = Callable[[float, str], None]
"""Receives (monotonic start time, the printed header line) when the first attempt starts."""


class Runner:
    """Builds and runs commands for one worker; holds the compiled template."""

    def __init__(self, settings: RunSettings) -> None:
        self.settings = settings
        self.template: Template | None = None
        if settings.template:
            from .templates import compile_template  # only workers that render pay for it

            self.template = compile_template(
                settings.template,
                settings.output_format,
                allow_missing=settings.allow_missing_template_keys,
            )
        self._devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        # Only build a private environment when something must be added to it: passing
        # env=None lets the child inherit ours without copying it per spawn.
        self._needs_env = bool(
            settings.type_env_var or settings.object_env_var or settings.object_channel == "file"
        )
        # Only the object variable needs the object decoded (it is re-encoded as kubectl
        # does); stdin and the object file get the server's bytes as they are.
        self._needs_object = bool(settings.object_env_var)
        # os.environ decodes every variable on each copy (~16 us); a dict copies in ~0.1 us.
        self._base_env = dict(os.environ)
        self._tmpdir: str | None = None
        self.fence: Fence | None = None
        """Set by the worker in a group of replicas: asked before every attempt starts."""

    def close(self) -> None:
        os.close(self._devnull)
        if self._tmpdir:
            with contextlib.suppress(OSError):
                os.rmdir(self._tmpdir)

    # ------------------------------------------------------------------ building

    def build_args(self, job: Job, parsed: Any) -> tuple[list[str], str | None]:
        """The object arguments ``[ns] name [template output]`` and the template output."""
        base = [job["ns"], job["name"]] if self.settings.namespaced else [job["name"]]
        arg: str | None = job.get("cached_arg")
        if arg is None and self.template is not None and parsed is not None:
            arg = self._render(self.template, job, parsed)
        if arg is not None:
            base.append(arg)
        return base, arg

    def _render(self, template: Template, job: Job, parsed: Any) -> str:
        """The template argument for one object. Every template language's render errors
        pass here, so one rule decides whether they may quote the object."""
        try:
            return template.render(parsed)
        except TemplateError as exc:
            quote = self.settings.template_errors_quote_object
            raise template_failure(exc, job, quote_object=quote) from None

    def _environment(self, job: Job, parsed: Any, obj: bytes | None) -> dict[str, str] | None:
        epoch = job.get("epoch")
        if not self._needs_env and epoch is None:
            return None
        env = self._base_env.copy()
        if epoch is not None:
            env["FASTOBS_BUCKET"] = str(job.get("bucket", 0))
            env["FASTOBS_SHARD_EPOCH"] = str(epoch)
        s = self.settings
        if s.object_env_var:
            env[s.object_env_var] = kubectl_json(parsed).decode() if obj is not None else ""
        if s.type_env_var:
            env[s.type_env_var] = job["type"]
        return env

    def _stdin_for(self, obj: bytes | None, env: dict[str, str] | None) -> tuple[int, str | None]:
        """The child's stdin fd (caller closes it unless it is /dev/null) and a file to remove."""
        channel = self.settings.object_channel
        if channel == "stdin" and obj is not None:
            fd = os.memfd_create("fastobs-object", os.MFD_CLOEXEC)
            os.write(fd, obj)
            os.lseek(fd, 0, os.SEEK_SET)
            return fd, None
        if channel == "file" and env is not None:
            if self._tmpdir is None:
                base = "/dev/shm" if os.path.isdir("/dev/shm") else None
                self._tmpdir = tempfile.mkdtemp(prefix="fastobs-", dir=base)
            fd, path = tempfile.mkstemp(dir=self._tmpdir, suffix=".json")
            with os.fdopen(fd, "wb") as f:
                f.write(obj or b"")
            env[self.settings.object_file_env_var] = path
            return self._devnull, path
        return self._devnull, None

    # ------------------------------------------------------------------ running

    async def run(
        self,
        job: Job,
        obj: bytes | None,
        on_begin: BeginSink,
        on_line: LineSink | None = None,
    ) -> tuple[Done, bytes, bytes]:
        """Run one job with oc's retry rule; returns (result header, stdout, stderr).

        Raises :class:`~fastobs.errors.TemplateError` when the template fails for the object
        (:func:`template_failure` words it).
        """
        s = self.settings
        cmd = s.delete_command if job["type"] == "Deleted" else s.command
        parsed: Any = None
        try:
            if obj is not None and (self._needs_object or (self.template and job.get("cached_arg") is None)):
                parsed = orjson.loads(obj)
            args, arg = self.build_args(job, parsed)
            env = self._environment(job, parsed, obj) if cmd else None
        except (ValueError, TypeError, RecursionError) as exc:
            # The object cannot be decoded, encoded or rendered (nested deeper than the parser
            # goes): this event fails for its key alone, and no command runs.
            return self._invalid_object(job, cmd, exc), b"", b""
        started_wall = time.time()
        printed = [cmd[0] if cmd else "", *cmd[1:], *args]
        header = header_line(rfc3339_local(started_wall), job["type"], job["rv"], printed)
        result: Done = {"id": job["id"], "header": header, "arg": arg, "ok": True, "started": 0.0,
                        "ended": 0.0, "attempts": []}
        if not cmd:
            # oc prints the header and runs nothing when no command is set for this type.
            now = time.monotonic()
            on_begin(now, header)
            result["nocmd"], result["started"], result["ended"] = True, now, now
            return result, b"", b""
        stdin, tmpfile = self._stdin_for(obj, env)
        try:
            out, err = await self._attempts([*cmd, *args], env, stdin, result, on_begin, on_line)
        finally:
            if stdin != self._devnull:
                os.close(stdin)
            if tmpfile:
                with contextlib.suppress(OSError):
                    os.unlink(tmpfile)
        return result, out, err

    def _invalid_object(self, job: Job, cmd: tuple[str, ...], exc: BaseException) -> Done:
        now = time.monotonic()
        base = [job["ns"], job["name"]] if self.settings.namespaced else [job["name"]]
        printed = [cmd[0] if cmd else "", *cmd[1:], *base]
        detail = " ".join(str(exc).split()) or type(exc).__name__
        header = header_line(rfc3339_local(time.time()), job["type"], job["rv"], printed)
        return {"id": job["id"], "header": header, "arg": None, "ok": False, "started": now, "ended": now,
                "attempts": [], "nocmd": True, "reason": INVALID_OBJECT,
                "error": f"the object could not be decoded for the command: {detail}"}

    async def _attempts(
        self,
        argv: list[str],
        env: dict[str, str] | None,
        stdin: int,
        result: Done,
        on_begin: BeginSink,
        on_line: LineSink | None,
    ) -> tuple[bytes, bytes]:
        """Run the attempts oc's retry rule allows; fills in ``result`` and returns (stdout, stderr)."""
        s = self.settings
        attempts: list[tuple[int, float]] = []
        outs: list[bytes] = []
        errs: list[bytes] = []
        result["started"] = time.monotonic()
        on_begin(result["started"], result["header"])
        retries = 0
        job_id = result["id"]
        while True:
            if stdin != self._devnull:
                os.lseek(stdin, 0, os.SEEK_SET)
            if self.fence is not None and not self.fence.may_start(job_id):
                status = _Status(False, FENCED, "", -1, 0.0)
                break
            status = await self._one_attempt(argv, env, stdin, outs, errs, on_line, job_id)
            attempts.append((status.oc_code, status.seconds))
            if status.ok:
                break
            if (
                status.reason != "spawn_error"
                and s.retry_on_exit_code != 0
                and status.oc_code == s.retry_on_exit_code
                and retries < s.retry_count
            ):
                retries += 1
                continue
            break
        result["ended"] = time.monotonic()
        if self.fence is not None and self.fence.fenced(job_id):
            status = _Status(False, FENCED, status.code, status.oc_code, status.seconds)
        result["ok"] = status.ok
        result["reason"] = status.reason
        result["code"] = status.code
        result["attempts"] = attempts
        result["retries"] = retries
        if not status.ok:
            result["error"] = status.error(argv[0], s.timeout)
        return b"".join(outs), b"".join(errs)

    async def _one_attempt(
        self,
        argv: list[str],
        env: dict[str, str] | None,
        stdin: int,
        outs: list[bytes],
        errs: list[bytes],
        on_line: LineSink | None,
        job_id: int,
    ) -> _Status:
        t0 = time.monotonic()
        streams = _Streams(on_line)
        try:
            child = spawn.start(argv, env=env, stdin=stdin, stdout=streams.out_w, stderr=streams.err_w)
        except OSError as exc:
            streams.close()
            status = _Status(False, "spawn_error", errno.errorcode.get(exc.errno or 0, ""), -1,
                             time.monotonic() - t0)
            status.message = spawn.exec_error(argv[0], exc)
            return status
        streams.started()
        if self.fence is not None:
            self.fence.started(job_id, child.pid)
        timed_out = False
        try:
            if self.settings.timeout > 0:
                try:
                    code = await asyncio.wait_for(asyncio.shield(child.wait()), self.settings.timeout)
                except TimeoutError:
                    timed_out = True
                    code = await child.terminate(self.settings.kill_grace)
            else:
                code = await child.wait()
        except asyncio.CancelledError:
            # Shutdown: stop the whole group, then let the cancellation continue.
            await child.terminate(self.settings.kill_grace)
            streams.close()
            raise
        finally:
            if self.fence is not None:
                self.fence.ended(job_id)
        out, err = streams.finish()
        outs.append(out)
        errs.append(err)
        seconds = time.monotonic() - t0
        if timed_out:
            return _Status(False, "timeout", "", -1, seconds)
        if code == 0:
            return _Status(True, "", "0", 0, seconds)
        reason, label = spawn.describe_status(code)
        return _Status(False, reason, label, code if code > 0 else -1, seconds)


def template_failure(error: TemplateError, job: Job, *, quote_object: bool) -> TemplateError:
    """The error fastobs stops with when a template fails for one object.

    oc's message may quote object data (JSONPath's quotes the whole object, Secret data
    included). Unless ``quote_object`` (``--loglevel`` 8 or more: oc's message word for
    word), fastobs prints the object's key and the language's summary (the template, the
    failing path, the reason) instead, saying when it withheld object data; a language that
    gives no summary might quote object data anywhere, so then only the key is printed.
    """
    if quote_object:
        return error
    key = f"{job['ns']}/{job['name']}" if job["ns"] else job["name"]
    level = QUOTE_OBJECT_VERBOSITY
    if not error.summary:
        what = f"the template failed for this object; --loglevel {level} or more prints why"
    elif error.withheld:
        what = f"{error.summary} (object data withheld; --loglevel {level} or more prints it)"
    else:
        what = error.summary
    return TemplateError(f"unable to write arguments for {key}: {what}")


class _Status:
    __slots__ = ("ok", "reason", "code", "oc_code", "seconds", "message")

    def __init__(self, ok: bool, reason: str, code: str, oc_code: int, seconds: float) -> None:
        self.message = ""
        """For spawn errors: Go's exec error text (``code`` is then the errno name)."""
        self.ok = ok
        self.reason = reason
        self.code = code
        self.oc_code = oc_code
        self.seconds = seconds

    def error(self, exe: str, timeout: float) -> str:
        if self.reason == "spawn_error":
            return self.message
        if self.reason == "timeout":
            return f"command {go_quote(exe)} timed out after {timeout:g}s and was killed"
        if self.reason == FENCED:
            return f"command {go_quote(exe)} was stopped: this replica no longer owns the object"
        return f"command {go_quote(exe)} exited with status code {self.oc_code}"


class _Streams:
    """The child's stdout/stderr: memfds in grouped mode, pipes read line by line in stream mode."""

    def __init__(self, on_line: LineSink | None) -> None:
        self.on_line = on_line
        self.grouped = on_line is None
        self._bufs: dict[int, bytearray] = {}
        if self.grouped:
            self.out_r = self.out_w = os.memfd_create("fastobs-stdout", os.MFD_CLOEXEC)
            self.err_r = self.err_w = os.memfd_create("fastobs-stderr", os.MFD_CLOEXEC)
        else:
            self.out_r, self.out_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
            self.err_r, self.err_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)

    def started(self) -> None:
        if self.grouped:
            return
        # Our copies of the write ends must close, or EOF never comes.
        os.close(self.out_w)
        os.close(self.err_w)
        loop = asyncio.get_running_loop()
        for fd, stream in ((self.out_r, 1), (self.err_r, 2)):
            self._bufs[fd] = bytearray()
            loop.add_reader(fd, self._readable, fd, stream)

    def _readable(self, fd: int, stream: int) -> None:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            return
        buf = self._bufs[fd]
        if not chunk:
            asyncio.get_running_loop().remove_reader(fd)
            return
        buf += chunk
        *lines, rest = bytes(buf).split(b"\n")
        buf[:] = rest
        assert self.on_line is not None
        for line in lines:
            self.on_line(stream, line + b"\n")

    def finish(self) -> tuple[bytes, bytes]:
        if self.grouped:
            out, err = _read_memfd(self.out_r), _read_memfd(self.err_r)
            os.close(self.out_r)
            os.close(self.err_r)
            return out, err
        # Drain what is already there; a grandchild still holding the pipe is not waited for.
        loop = asyncio.get_running_loop()
        for fd, stream in ((self.out_r, 1), (self.err_r, 2)):
            loop.remove_reader(fd)
            with contextlib.suppress(BlockingIOError):
                while chunk := os.read(fd, 65536):
                    self._bufs[fd] += chunk
            rest = bytes(self._bufs[fd])
            if rest and self.on_line is not None:
                self.on_line(stream, rest + b"\n")
            os.close(fd)
        return b"", b""

    def close(self) -> None:
        fds = {self.out_r, self.out_w, self.err_r, self.err_w}
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)


def _read_memfd(fd: int) -> bytes:
    data = spawn.read_memfd(fd)
    # oc writes a newline after output that does not end with one.
    return data if not data or data.endswith(b"\n") else data + b"\n"
