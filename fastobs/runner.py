"""Runner: turn one job into one command invocation, exactly as ``oc observe`` builds it.

Where it sits: inside a worker, called by ``worker`` for each RUN frame (at most
``--concurrency`` at once). In: the job header and the raw object JSON. Out: a result
header (status, attempts, timings, the printed header line) plus the captured stdout and
stderr of the command.

Invocation (oc-compatible, see docs/usage.md): argv is ``[cmd args...] [namespace] name
[template output]``; the environment gets ``--type-env-var`` and ``--object-env-var``
(kubectl's JSON encoding); stdin is /dev/null unless the object is sent on stdin.

Invariants: the command is executed directly, never through a shell, so object data can
only ever become single argv elements; a command that cannot start (an exec error, a NUL
byte in an argument) is a failed command like any other, never a lost job; every command
runs in its own process group and is killed as a group on timeout and at shutdown; at most
``--output-limit`` bytes of a command's output are held (the rest is dropped, counted and
marked with a line); once the command exited its pipes are not waited on, so a grandchild
that keeps the output open cannot hold the worker up; a template that fails for an object
(any language) stops fastobs with an error that names the object's key but does not quote
the object below ``--loglevel 8`` (:func:`template_failure`).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson

from . import spawn
from .encoding import kubectl_json, kubectl_json_of
from .errors import TemplateError
from .fencing import FENCED, Fence
from .gocompat import go_process_state, go_quote
from .header import header_body
from .protocol import INVALID_OBJECT, Done, Job
from .settings import QUOTE_OBJECT_VERBOSITY, RunSettings

if TYPE_CHECKING:
    from .templates import Template

logger = logging.getLogger(__name__)

LineSink = Callable[[int, bytes], None]
"""Stream mode: receives (fd, one line of output) as the command prints it."""
BeginSink = Callable[[float, str], None]
"""Receives (monotonic start time, the header line's body) when the first attempt starts."""
DRAIN_LIMIT = 1 << 20
"""Bytes read from a pipe after its command exited, at most: a grandchild may still write."""
WATCH_DELAY = 0.05
"""A command's pipes are watched by the loop once it has run this long. Most commands end
sooner, their output still in the pipe (64 KiB), read once at their exit: watching every
pipe from the start costs ~50 us of the worker's CPU per command (uvloop's poll handles)."""


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
        # Kept as bytes: os.environ decodes every variable on each copy (~16 us), and
        # posix_spawn would encode every str key and value again on each spawn;
        # a dict of bytes copies in ~0.1 us and goes to execve as it is.
        self._base_env: dict[bytes, bytes] = dict(os.environb)
        if settings.identity:
            self._base_env[b"FASTOBS_IDENTITY"] = os.fsencode(settings.identity)
            self._needs_env = True
        self._object_dir: str | None = settings.object_dir or None
        """Where --object-channel=file writes object files: given by the parent (which
        removes it if this worker dies), else made on first use."""
        self._running: dict[int, spawn.Child] = {}
        self._killed: dict[int, str] = {}
        """Commands stopped by :meth:`kill_all`: pid -> why (the end of the error line)."""
        self.stopping = ""
        self._streams: set[_Streams] = set()
        self.paused = False
        self._sweep: asyncio.TimerHandle | None = None
        self.fence: Fence | None = None
        """Set by the worker in a group of replicas: asked before every attempt starts."""

    def close(self) -> None:
        """Release what the runner holds; the object files' directory goes with it."""
        os.close(self._devnull)
        if self._object_dir:
            shutil.rmtree(self._object_dir, ignore_errors=True)

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

    def _environment(self, job: Job, parsed: Any, obj: bytes | None) -> dict[bytes, bytes] | None:
        epoch = job.get("epoch")
        if not self._needs_env and epoch is None:
            return None
        env = self._base_env.copy()
        if epoch is not None:
            env[b"FASTOBS_BUCKET"] = str(job.get("bucket", 0)).encode()
            env[b"FASTOBS_SHARD_EPOCH"] = str(epoch).encode()
        s = self.settings
        if s.object_env_var:
            # The object as kubectl prints it: re-encoded from the decoded tree a template
            # needed anyway, else straight from the server's bytes (no tree kept).
            if obj is None:
                value = b""
            else:
                value = kubectl_json(parsed) if parsed is not None else kubectl_json_of(obj)
            env[os.fsencode(s.object_env_var)] = value
        if s.type_env_var:
            env[os.fsencode(s.type_env_var)] = job["type"].encode()
        return env

    def _stdin_for(self, obj: bytes | None, env: dict[bytes, bytes] | None) -> tuple[int, str | None]:
        """The child's stdin fd (caller closes it unless it is /dev/null) and a file to remove."""
        channel = self.settings.object_channel
        if channel == "stdin" and obj is not None:
            fd = os.memfd_create("fastobs-object", os.MFD_CLOEXEC)
            os.write(fd, obj)
            os.lseek(fd, 0, os.SEEK_SET)
            return fd, None
        if channel == "file" and env is not None:
            if self._object_dir is None:
                self._object_dir = object_dir(f"fastobs-{os.getpid()}-")
            fd, path = tempfile.mkstemp(dir=self._object_dir, suffix=".json")
            with os.fdopen(fd, "wb") as f:
                f.write(obj or b"")
            env[os.fsencode(self.settings.object_file_env_var)] = os.fsencode(path)
            return self._devnull, path
        return self._devnull, None

    def header(self, job: Job, args: list[str]) -> str:
        """oc's header line for this job without its ``# <TS> ``: ``<Type> <rv>\\t<command
        line>`` (the parent stamps it; see ``Done.header``)."""
        s = self.settings
        cmd = s.delete_command if job["type"] == "Deleted" else s.command
        printed = [cmd[0] if cmd else "", *cmd[1:], *args]
        return header_body(job["type"], job["rv"], printed)

    def failure(self, job: Job, reason: str, code: str, message: str) -> Done:
        """The result of a job whose run failed in fastobs itself: a failed command, so that
        the job still ends (and its key can run again)."""
        now = time.monotonic()
        args = [job["ns"], job["name"]] if self.settings.namespaced else [job["name"]]
        return {"id": job["id"], "header": self.header(job, args), "arg": None, "ok": False,
                "started": now, "ended": now, "attempts": [(-1, 0.0)], "reason": reason, "code": code,
                "error": message}

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
            # Only a template needs the decoded object; --object-env-var re-encodes from the
            # bytes; stdin and the object file get the server's bytes as they are.
            if obj is not None and self.template and job.get("cached_arg") is None:
                parsed = orjson.loads(obj)
            elif obj is not None and not cmd and s.object_env_var:
                orjson.loads(obj)  # nothing runs, but an object $OBJ cannot carry still fails
            args, arg = self.build_args(job, parsed)
            env = self._environment(job, parsed, obj) if cmd else None
        except (ValueError, TypeError, RecursionError) as exc:
            # The object cannot be decoded, encoded or rendered (nested deeper than the parser
            # goes): this event fails for its key alone, and no command runs.
            return self._invalid_object(job, exc), b"", b""
        # The decoded tree is not needed once argv and the environment are built: freed now,
        # not when the command ends, it never lives across an await, so --concurrency trees
        # (hundreds of dicts each) do not sit in the young generation and set off collections.
        parsed = None
        header = self.header(job, args)
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
            key = f"{job['ns']}/{job['name']}" if job["ns"] else job["name"]
            out, err = await self._attempts([*cmd, *args], env, stdin, result, on_begin, on_line, key)
        finally:
            if stdin != self._devnull:
                os.close(stdin)
            if tmpfile:
                with contextlib.suppress(OSError):
                    os.unlink(tmpfile)
        return result, out, err

    def _invalid_object(self, job: Job, exc: BaseException) -> Done:
        now = time.monotonic()
        base = [job["ns"], job["name"]] if self.settings.namespaced else [job["name"]]
        detail = " ".join(str(exc).split()) or type(exc).__name__
        header = self.header(job, base)
        return {"id": job["id"], "header": header, "arg": None, "ok": False, "started": now, "ended": now,
                "attempts": [], "nocmd": True, "reason": INVALID_OBJECT,
                "error": f"the object could not be decoded for the command: {detail}"}

    async def kill_all(self, why: str, grace: float) -> None:
        """Stop every running command: SIGTERM to its process group, SIGKILL after ``grace``
        seconds. Each is reported as a failure whose error line ends with ``why``, and no
        retry of theirs starts."""
        self.stopping = why
        children = list(self._running.values())
        for child in children:
            self._killed[child.pid] = why
        await asyncio.gather(*(child.terminate(grace) for child in children))

    def pause_output(self) -> None:
        """Stop reading the commands' output (the parent is not keeping up): a command that
        fills its pipe then waits, as it would writing to a slow terminal."""
        self.paused = True
        for streams in self._streams:
            streams.unwatch()

    def resume_output(self) -> None:
        self.paused = False
        for streams in self._streams:
            streams.watch()

    def _watch_later(self) -> None:
        if self._sweep is None and not self.paused:
            self._sweep = asyncio.get_running_loop().call_later(WATCH_DELAY, self._watch_running)

    def _watch_running(self) -> None:
        """Watch the pipes of the commands that have run WATCH_DELAY or longer."""
        self._sweep = None
        if self.paused:
            return
        now = time.monotonic()
        waiting = False
        for streams in self._streams:
            if now - streams.started_at >= WATCH_DELAY:
                streams.watch()
            else:
                waiting = True
        if waiting:
            self._watch_later()

    async def _attempts(
        self,
        argv: list[str],
        env: dict[bytes, bytes] | None,
        stdin: int,
        result: Done,
        on_begin: BeginSink,
        on_line: LineSink | None,
        key: str,
    ) -> tuple[bytes, bytes]:
        """Run the attempts oc's retry rule allows; fills in ``result`` and returns (stdout, stderr)."""
        s = self.settings
        attempts: list[tuple[int, float]] = []
        outs: list[bytes] = []
        errs: list[bytes] = []
        budget = _Budget(s.output_limit)
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
            status = await self._one_attempt(argv, env, stdin, outs, errs, on_line, budget, job_id)
            if not attempts and status.spawned:
                result["spawned"] = status.spawned
            attempts.append((status.oc_code, status.seconds))
            if status.ok:
                break
            if (
                status.reason not in ("spawn_error", "shutdown")
                and not self.stopping
                and s.retry_on_exit_code != 0
                and status.oc_code == s.retry_on_exit_code
                and retries < s.retry_count
            ):
                retries += 1
                # oc's klog.V(4) line, with Go's text of the attempt's end.
                logger.debug("retrying command: %s", status.ended_as, extra={"key": key})
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
        if budget.dropped:
            result["dropped"] = budget.dropped
        if not status.ok:
            result["error"] = status.error(argv[0], s.timeout)
        return b"".join(outs), b"".join(errs)

    async def _one_attempt(
        self,
        argv: list[str],
        env: dict[bytes, bytes] | None,
        stdin: int,
        outs: list[bytes],
        errs: list[bytes],
        on_line: LineSink | None,
        budget: _Budget,
        job_id: int,
    ) -> _Status:
        t0 = time.monotonic()
        streams: _Streams | None = None
        try:
            streams = _Streams(self, on_line, budget)
            child = spawn.start(argv, env=env, stdin=stdin, stdout=streams.child_out,
                                stderr=streams.child_err)
        except OSError as exc:  # exec failed, a NUL byte, no descriptors left: a failed command
            if streams is not None:
                streams.close()
            status = _Status(False, "spawn_error", errno.errorcode.get(exc.errno or 0, ""), -1,
                             time.monotonic() - t0)
            status.message = spawn.exec_error(argv[0], exc)
            return status
        self._running[child.pid] = child
        spawned = time.monotonic()
        streams.started()
        if self.fence is not None:
            self.fence.started(job_id, child.pid)
        timed_out = False
        try:
            if self.settings.timeout > 0:
                try:
                    code = await asyncio.wait_for(child.wait(), self.settings.timeout)
                except TimeoutError:
                    timed_out = True
                    code = await child.terminate(self.settings.kill_grace)
            else:
                code = await child.wait()
        except asyncio.CancelledError:
            # The worker is going away: stop the whole group, then let the cancellation continue.
            await child.terminate(self.settings.kill_grace)
            streams.close()
            raise
        finally:
            self._running.pop(child.pid, None)
            if self.fence is not None:
                self.fence.ended(job_id)
        out, err = streams.finish()
        outs.append(out)
        errs.append(err)
        seconds = time.monotonic() - t0
        killed_for = self._killed.pop(child.pid, "")
        if killed_for and code != 0:
            status = _Status(False, "shutdown", spawn.describe_status(code)[1], -1, seconds)
            status.message = killed_for
            return status
        if timed_out:
            status = _Status(False, "timeout", "", -1, seconds)
        elif code == 0:
            status = _Status(True, "", "0", 0, seconds)
        else:
            reason, label = spawn.describe_status(code)
            status = _Status(False, reason, label, code if code > 0 else -1, seconds)
        status.spawned = spawned
        status.ended_as = go_process_state(code)
        return status


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


def object_dir(prefix: str) -> str:
    """A new private directory (0700) for object files: in /dev/shm (memory, never disk)
    where it exists."""
    base = "/dev/shm" if os.path.isdir("/dev/shm") else None
    return tempfile.mkdtemp(prefix=prefix, dir=base)


class _Status:
    __slots__ = ("ok", "reason", "code", "oc_code", "seconds", "message", "spawned", "ended_as")

    def __init__(self, ok: bool, reason: str, code: str, oc_code: int, seconds: float) -> None:
        self.spawned = 0.0
        """Monotonic time the command had been exec'd (0: it never started)."""
        self.message = ""
        """Spawn errors: Go's exec error text (``code`` is then the errno name); commands
        killed at shutdown: why."""
        self.ended_as = ""
        """Go's text of how the command ended (``exit status 3``, ``signal: killed``)."""
        self.ok = ok
        self.reason = reason
        self.code = code
        self.oc_code = oc_code
        self.seconds = seconds

    def error(self, exe: str, timeout: float) -> str:
        if self.reason == "spawn_error":
            return self.message
        if self.reason == "shutdown":
            return f"command {go_quote(exe)} {self.message}"
        if self.reason == "timeout":
            return f"command {go_quote(exe)} timed out after {timeout:g}s and was killed"
        if self.reason == FENCED:
            return f"command {go_quote(exe)} was stopped: this replica no longer owns the object"
        return f"command {go_quote(exe)} exited with status code {self.oc_code}"


class _Budget:
    """How much more output one command (all its attempts) may leave in memory."""

    __slots__ = ("limit", "left", "dropped")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.left = limit
        self.dropped = 0

    def take(self, n: int) -> int:
        """Of ``n`` new bytes, how many to keep; the rest count as dropped."""
        keep = min(n, self.left)
        self.left -= keep
        self.dropped += n - keep
        return keep


def marker(dropped: int, what: str, limit: int) -> bytes:
    """The line that stands for output fastobs did not keep."""
    return f"[fastobs: {dropped} more bytes of {what} dropped (--output-limit={limit})]\n".encode()


class _Streams:
    """The child's stdout and stderr: two pipes whose read ends the worker's loop watches.

    Grouped mode keeps each stream's bytes, up to the command's budget; stream mode hands
    each line to ``on_line`` as it completes, a line longer than the limit cut there. The
    child's ends are blocking (a program that fills a pipe waits, as on a terminal; it never
    sees EAGAIN); ours are not. Once the command exited, what is left in the pipes is read
    without waiting for EOF, so a grandchild that keeps them open holds nothing up. Every
    descriptor is closed exactly once, its reader removed first: a descriptor number is
    reused at once by the next command's pipes.
    """

    def __init__(self, runner: Runner, on_line: LineSink | None, budget: _Budget) -> None:
        self.runner = runner
        self.loop = asyncio.get_running_loop()
        self.on_line = on_line
        self.budget = budget
        self._open: set[int] = set()
        self._watched: set[int] = set()
        self._stream: dict[int, int] = {}
        """Our read ends: fd -> 1 (stdout) or 2 (stderr)."""
        self._data = {1: bytearray(), 2: bytearray()}
        """Grouped: the bytes kept. Stream mode: the line being read."""
        self._dropped = {1: 0, 2: 0}
        self._cutting = {1: False, 2: False}
        """Stream mode: the rest of an over-long line is being dropped."""
        self.started_at = 0.0
        try:
            out_r, self.child_out = self._pipe()
            err_r, self.child_err = self._pipe()
        except OSError:
            self.close()
            raise
        self._stream = {out_r: 1, err_r: 2}

    def _pipe(self) -> tuple[int, int]:
        r, w = os.pipe2(os.O_CLOEXEC)
        self._open.update((r, w))
        fcntl.fcntl(r, fcntl.F_SETFL, os.O_NONBLOCK)  # a read end has no other status flag
        return r, w

    def started(self) -> None:
        """The child has its copies: ours of the write ends must close, or EOF never comes."""
        self._close(self.child_out)
        self._close(self.child_err)
        self.started_at = time.monotonic()
        self.runner._streams.add(self)
        self.runner._watch_later()

    def watch(self) -> None:
        for fd in self._stream:
            if fd in self._open and fd not in self._watched:
                self.loop.add_reader(fd, self._readable, fd)
                self._watched.add(fd)

    def unwatch(self) -> None:
        for fd in list(self._watched):
            self.loop.remove_reader(fd)
            self._watched.discard(fd)

    def _close(self, fd: int) -> None:
        if fd not in self._open:
            return
        if fd in self._watched:
            self.loop.remove_reader(fd)
            self._watched.discard(fd)
        self._open.discard(fd)
        os.close(fd)

    def close(self) -> None:
        for fd in list(self._open):
            self._close(fd)
        self.runner._streams.discard(self)

    def _readable(self, fd: int) -> None:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if chunk:
            self._feed(self._stream[fd], chunk)
        else:
            self._close(fd)  # EOF: every writer is gone

    def _feed(self, stream: int, chunk: bytes) -> None:
        if self.on_line is None:
            keep = self.budget.take(len(chunk))
            self._data[stream] += chunk if keep == len(chunk) else chunk[:keep]
            self._dropped[stream] += len(chunk) - keep
            return
        if self._cutting[stream]:
            end = chunk.find(b"\n")
            if end < 0:
                self._drop_line_rest(stream, len(chunk), ended=False)
                return
            self._drop_line_rest(stream, end, ended=True)
            chunk = chunk[end + 1 :]
        buf = self._data[stream]
        buf += chunk
        if b"\n" in chunk:
            *lines, rest = bytes(buf).split(b"\n")
            buf[:] = rest
            for line in lines:
                self._line(stream, line)
        if len(buf) > self.budget.limit:
            self._cut_line(stream, bytes(buf))
            buf.clear()

    def _line(self, stream: int, line: bytes) -> None:
        assert self.on_line is not None
        if len(line) > self.budget.limit:
            self._cut_line(stream, line)
            self._drop_line_rest(stream, 0, ended=True)
        else:
            self.on_line(stream, line + b"\n")

    def _cut_line(self, stream: int, line: bytes) -> None:
        """Stream mode: pass on the first ``limit`` bytes of a line; drop the rest of it."""
        assert self.on_line is not None
        limit = self.budget.limit
        self.on_line(stream, line[:limit] + b"\n")
        self._cutting[stream] = True
        self._dropped[stream] = 0
        self._drop_line_rest(stream, len(line) - limit, ended=False)

    def _drop_line_rest(self, stream: int, n: int, *, ended: bool) -> None:
        assert self.on_line is not None
        self._dropped[stream] += n
        self.budget.dropped += n
        if ended:
            self._cutting[stream] = False
            self.on_line(stream, marker(self._dropped[stream], "this line", self.budget.limit))
            self._dropped[stream] = 0

    def finish(self) -> tuple[bytes, bytes]:
        """The command exited: read what is left (without waiting for EOF), close the pipes,
        and return (stdout, stderr) in grouped mode; flush the last partial lines in stream mode."""
        for fd, stream in self._stream.items():
            left = DRAIN_LIMIT
            while fd in self._open and left > 0:
                try:
                    chunk = os.read(fd, min(65536, left))
                except BlockingIOError:
                    break
                except OSError:
                    chunk = b""
                if not chunk:
                    break
                left -= len(chunk)
                self._feed(stream, chunk)
        self.close()
        if self.on_line is not None:
            for stream in (1, 2):
                if self._cutting[stream]:
                    self._drop_line_rest(stream, 0, ended=True)
                elif self._data[stream]:
                    self.on_line(stream, bytes(self._data[stream]) + b"\n")
            return b"", b""
        return self._grouped(1), self._grouped(2)

    def _grouped(self, stream: int) -> bytes:
        data = bytes(self._data[stream])
        # oc writes a newline after output that does not end with one.
        if data and not data.endswith(b"\n"):
            data += b"\n"
        dropped = self._dropped[stream]
        if dropped:
            data += marker(dropped, "stdout" if stream == 1 else "stderr", self.budget.limit)
        return data
