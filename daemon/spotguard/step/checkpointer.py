"""The user-facing helper: restore, save, safe points, the endpoint and the SIGTERM handler.

Threads: the user's state belongs to the thread that runs the work (the main thread). The
endpoint's thread and the SIGTERM handler never touch it: they only *request* a checkpoint. The
work thread honours the request at its next safe point (``safe_point`` / ``units``), where its
state is consistent, saves it there, releases the waiting HTTP answer, and raises ``YieldExit``.
If no safe point comes before the deadline the HTTP request is answered 504 and the request stays
pending (the next safe point still saves and yields); after SIGTERM a watchdog ends the process
with the yield code when the grace period is nearly over, keeping the last committed checkpoint.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, NoReturn, Self

from spotguard.step.checkpoint import Checkpoint, CheckpointStore, Saved
from spotguard.step.endpoint import CheckpointEndpoint, CheckpointRequest, Respond
from spotguard.step.errors import CheckpointError, SettingError
from spotguard.step.store import Store, open_store

log = logging.getLogger("spotguard.step")

#: The exit code of a step that saved its state because it was asked to (EX_TEMPFAIL in
#: sysexits.h: "temporary failure, try again later"). Non-zero, so Argo's OnFailure retry runs it
#: again; the same code after SIGTERM.
YIELD_EXIT_CODE = 75

DEFAULT_PORT = 8471
DEFAULT_PATH = "/checkpoint"
DEFAULT_TOKEN_FILE = "/var/run/secrets/spotguard-checkpoint/token"  # noqa: S105 (a path)
DEFAULT_GRACE = 30.0
#: seconds kept back from a deadline to write the HTTP answer / to exit before SIGKILL
ANSWER_MARGIN = 0.2
EXIT_MARGIN = 1.0
#: longest an HTTP request waits for a safe point, whatever its deadline says
MAX_WAIT = 120.0
#: how long the work thread waits for waiting HTTP answers to be written before it exits
ANSWER_WAIT = 2.0


class YieldExit(SystemExit):
    """Raised at a safe point once a requested checkpoint is saved. Uncaught, it ends the process
    with ``YIELD_EXIT_CODE`` and no traceback; ``saved`` is the checkpoint (None if saving failed
    after SIGTERM: the last committed checkpoint stands)."""

    def __init__(self, saved: Saved | None) -> None:
        super().__init__(YIELD_EXIT_CODE)
        self.saved = saved


@dataclass
class _Pending:
    """One checkpoint request (several HTTP requests and a SIGTERM may join it)."""

    reason: str  # "request" or "sigterm"
    event_id: str | None
    done: threading.Event = field(default_factory=threading.Event)
    saved: Saved | None = None
    error: tuple[int, str] | None = None  # HTTP status and reason when it cannot be honoured
    waiters: int = 0
    answered: threading.Condition = field(default_factory=threading.Condition)


class Checkpointer:
    """Checkpoint-and-yield for one pipeline step. See the package docstring for an example."""

    def __init__(
        self,
        location: str | Store,
        *,
        run_id: str = "",
        step: str = "",
        retry_index: int = 0,
        keep: int = 3,
        save_every: int = 1,
        token: str | None = None,
        host: str = "0.0.0.0",
        port: int = DEFAULT_PORT,
        path: str = DEFAULT_PATH,
        grace: float = DEFAULT_GRACE,
        handle_sigterm: bool = True,
        store_options: Mapping[str, Any] | None = None,
    ) -> None:
        if save_every < 0:
            raise SettingError("save_every must be 0 (only when asked) or more")
        if not path.startswith("/"):
            raise SettingError(f"the endpoint path must start with '/': {path!r}")
        store = (
            open_store(location, **dict(store_options or {}))
            if isinstance(location, str)
            else location
        )
        self.checkpoints = CheckpointStore(
            store, run_id=run_id, step=step, retry_index=retry_index, keep=keep
        )
        self.save_every = save_every
        self.grace = grace
        #: set once a checkpoint has been requested (by the agent or SIGTERM); user code may poll
        #: or wait on it, e.g. to cut a long unit short and reach a safe point sooner
        self.requested = threading.Event()
        self.last_saved: Saved | None = None
        self._token = token
        self._host, self._port, self._path = host, port, path
        self._handle_sigterm = handle_sigterm
        self._pending: _Pending | None = None
        self._lock = threading.Lock()
        self._units_since_save = 0
        self._endpoint: CheckpointEndpoint | None = None
        self._exiting = threading.Event()
        self._terminating = threading.Event()  # SIGTERM arrived: whatever happens, exit
        self._old_handler: Any = None
        self._old_wakeup_fd = -1
        self._wake: tuple[int, int] | None = None
        self._signal_thread: threading.Thread | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Checkpointer:
        """Settings from the environment (see docs/checkpoint.md); keyword arguments win."""
        env = os.environ if environ is None else environ
        location = env.get("SPOTGUARD_CHECKPOINT_URL", "")
        if not location and "location" not in overrides:
            raise SettingError("SPOTGUARD_CHECKPOINT_URL is not set (where checkpoints go)")
        if "{{" in location:
            # A template nobody filled in (an Argo/KFP placeholder used where it is not
            # substituted): every run would share one location and restore another's state.
            raise SettingError(
                f"SPOTGUARD_CHECKPOINT_URL still holds a template: {location!r}; the workflow "
                "engine did not substitute it"
            )
        retry = env.get("SPOTGUARD_RETRY_INDEX") or env.get("KFP_RETRY_INDEX") or "0"
        settings: dict[str, Any] = {
            "location": location,
            "run_id": env.get("SPOTGUARD_RUN_ID", ""),
            "step": env.get("SPOTGUARD_STEP", ""),
            "retry_index": _int_setting("SPOTGUARD_RETRY_INDEX/KFP_RETRY_INDEX", retry, 0),
            "keep": _int_setting(
                "SPOTGUARD_CHECKPOINT_KEEP", env.get("SPOTGUARD_CHECKPOINT_KEEP", "3"), 1
            ),
            "save_every": _int_setting(
                "SPOTGUARD_CHECKPOINT_EVERY", env.get("SPOTGUARD_CHECKPOINT_EVERY", "1"), 0
            ),
            "token": _read_token(env),
            "host": env.get("SPOTGUARD_CHECKPOINT_HOST", "0.0.0.0"),
            "port": _int_setting(
                "SPOTGUARD_CHECKPOINT_PORT",
                env.get("SPOTGUARD_CHECKPOINT_PORT", str(DEFAULT_PORT)),
                0,
            ),
            "path": env.get("SPOTGUARD_CHECKPOINT_PATH", DEFAULT_PATH),
            "grace": _float_setting(
                "SPOTGUARD_TERMINATION_GRACE",
                env.get("SPOTGUARD_TERMINATION_GRACE", str(DEFAULT_GRACE)),
            ),
        }
        settings.update(overrides)
        location = settings.pop("location")
        return cls(location, **settings)

    # --- context: endpoint and SIGTERM ---------------------------------------------------------

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop(exc)

    @property
    def endpoint_port(self) -> int | None:
        """The port the endpoint listens on, None when it is not serving."""
        return None if self._endpoint is None else self._endpoint.port

    def start(self) -> None:
        """Handle SIGTERM (if in the main thread) and serve the endpoint (if there is a token)."""
        # SIGTERM first: once the endpoint answers, an eviction may follow at once.
        if self._handle_sigterm and threading.current_thread() is threading.main_thread():
            self._install_sigterm()
        if self._token:
            try:
                self._endpoint = CheckpointEndpoint(
                    host=self._host,
                    port=self._port,
                    path=self._path,
                    token=self._token,
                    on_request=self._on_request,
                )
            except OSError as exc:
                # The step's work matters more than the endpoint; SIGTERM still saves.
                log.error(
                    "checkpoint endpoint not started on %s:%s: %s", self._host, self._port, exc
                )
            else:
                self._endpoint.start()
                log.info(
                    "checkpoint endpoint on %s:%d%s", self._host, self._endpoint.port, self._path
                )
        else:
            log.warning(
                "no checkpoint token (SPOTGUARD_CHECKPOINT_TOKEN or %s): endpoint not started; "
                "only SIGTERM triggers a checkpoint",
                DEFAULT_TOKEN_FILE,
            )

    def stop(self, failure: BaseException | None = None) -> None:
        """Stop the endpoint and restore the previous SIGTERM handler. ``failure``: the exception
        that ended the work, if any (it decides what a still-waiting request is told)."""
        with self._lock:
            pending = self._pending
        if pending is not None and not pending.done.is_set():
            # The work ended without reaching another safe point, so there is nothing to save.
            if failure is None:
                pending.error = (409, "the step finished its work and is exiting")
            else:
                pending.error = (503, f"the step's work failed: {type(failure).__name__}")
            pending.done.set()
            self._wait_for_answers(pending, time.monotonic() + ANSWER_WAIT)
        if self._endpoint is not None:
            self._endpoint.stop()
            self._endpoint = None
        if self._wake is not None:
            signal.signal(signal.SIGTERM, self._old_handler)
            with contextlib.suppress(ValueError):
                signal.set_wakeup_fd(self._old_wakeup_fd)
            with contextlib.suppress(OSError):
                os.write(self._wake[1], _STOP_BYTE)
            if self._signal_thread is not None:
                self._signal_thread.join(timeout=1.0)
            for fd in self._wake:
                with contextlib.suppress(OSError):
                    os.close(fd)
            self._wake = None

    # --- the API for the work --------------------------------------------------------------------

    def restore(self) -> Checkpoint | None:
        """The latest good checkpoint of this step (from any earlier attempt), or None."""
        found = self.checkpoints.restore()
        if found is not None:
            log.info(
                "restored checkpoint %d (progress %r) from %s",
                found.seq,
                found.progress,
                found.location,
            )
        return found

    def save(self, state: object, *, progress: Any = None) -> Saved:
        """Save ``state`` now (bytes, a JSON value, or a callable returning one) and commit it as
        the latest checkpoint. It does not answer a pending request: use ``safe_point`` for that."""
        saved = self.checkpoints.save(state, progress=progress)
        self.last_saved = saved
        self._units_since_save = 0
        return saved

    def safe_point(self, state: object, *, progress: Any = None) -> None:
        """Call when ``state`` is consistent, typically after each unit of work.

        If a checkpoint was requested, saves, answers the request and raises YieldExit;
        otherwise saves every ``save_every`` calls (0: only when asked). ``state`` may be a
        zero-argument callable, called only when a save happens. Call it from the thread that
        owns the state.
        """
        self._units_since_save += 1
        if self.requested.is_set():
            self._yield(state, progress)
            return  # only when saving failed and the step is to keep working
        if self.save_every and self._units_since_save >= self.save_every:
            try:
                self.save(state, progress=progress)
            except CheckpointError as exc:
                # A periodic save is insurance, not the work: keep working, try again next time.
                log.warning("periodic checkpoint failed: %s", exc)

    def units(self, stop: int, *, state: object, start: int = 0) -> Iterator[int]:
        """``range(start, stop)`` with a safe point after each unit; progress = units done.

        ``state`` is a callable returning the state after the unit (or a mutable JSON value /
        bytearray that the loop updates in place). Restart with
        ``start=checkpoint.progress``.
        """
        for index in range(start, stop):
            yield index
            self.safe_point(state, progress=index + 1)

    # --- requests ------------------------------------------------------------------------------

    def _join(self, reason: str, event_id: str | None, *, waiter: bool) -> _Pending:
        with self._lock:
            pending = self._pending
            if pending is None or (pending.done.is_set() and pending.saved is None):
                pending = _Pending(reason=reason, event_id=event_id)
                self._pending = pending
            if waiter:
                with pending.answered:
                    pending.waiters += 1
            self.requested.set()
            return pending

    def _on_request(self, request: CheckpointRequest, respond: Respond) -> None:
        log.warning(
            "checkpoint requested: event %s (%s) on node %s, deadline %s",
            request.event_id,
            request.kind,
            request.node,
            request.deadline.isoformat(),
        )
        pending = self._join("request", request.event_id, waiter=True)
        try:
            wait = request.deadline.timestamp() - time.time() - ANSWER_MARGIN
            if pending.done.wait(min(max(wait, 0.0), MAX_WAIT)):
                if pending.saved is not None:
                    respond(200, {"location": pending.saved.location, "bytes": pending.saved.size})
                else:
                    status, reason = pending.error or (503, "checkpoint failed")
                    respond(status, {"error": reason})
            else:
                respond(
                    504,
                    {
                        "error": "no safe point reached before the deadline; the step saves and "
                        "exits at its next safe point"
                    },
                )
        finally:
            with pending.answered:
                pending.waiters -= 1
                pending.answered.notify_all()

    def _yield(self, state: object, progress: Any) -> None:
        with self._lock:
            pending = self._pending
        assert pending is not None
        try:
            saved = self.checkpoints.save(
                state,
                progress=progress,
                reason=pending.reason,
                event_id=pending.event_id,
                clean_up=False,  # answer first; the next attempt's first save tidies up
            )
        except CheckpointError as exc:
            log.error("requested checkpoint failed: %s", exc)
            pending.error = (503, f"checkpoint failed: {exc}")
            pending.done.set()
            if self._terminating.is_set():
                self._exit(pending, None)
            # The agent will evict the pod and its SIGTERM tries again. Keep working until then.
            self._wait_for_answers(pending, time.monotonic() + ANSWER_WAIT)
            with self._lock:
                if self._pending is pending:
                    self._pending = None
                    self.requested.clear()
            return
        self.last_saved = saved
        pending.saved = saved
        pending.done.set()
        log.warning(
            "checkpoint %d saved (%d bytes, progress %r) at %s; exiting with %d to be retried",
            saved.seq,
            saved.size,
            saved.progress,
            saved.location,
            YIELD_EXIT_CODE,
        )
        self._exit(pending, saved)

    def _exit(self, pending: _Pending, saved: Saved | None) -> NoReturn:
        self._exiting.set()
        self._wait_for_answers(pending, time.monotonic() + ANSWER_WAIT)
        if threading.current_thread() is not threading.main_thread():
            # SystemExit would end only this thread; the process must go.
            _hard_exit()
        raise YieldExit(saved)

    @staticmethod
    def _wait_for_answers(pending: _Pending, until: float) -> None:
        with pending.answered:
            pending.answered.wait_for(
                lambda: pending.waiters <= 0, max(0.0, until - time.monotonic())
            )

    # --- SIGTERM -------------------------------------------------------------------------------

    def _install_sigterm(self) -> None:
        # Python runs signal handlers in the main thread only, between bytecodes: a main thread
        # inside a long C call or a sleep would run ours too late, and it may hold our locks. So
        # the C-level handler's wakeup fd (written at once, whatever the main thread does) wakes
        # a thread of ours; the Python handler writes to the same pipe as a fallback, in case
        # other code (an asyncio loop in the main thread) takes the wakeup fd over.
        read_fd, write_fd = os.pipe()
        os.set_blocking(write_fd, False)
        self._wake = (read_fd, write_fd)
        self._old_handler = signal.signal(signal.SIGTERM, self._on_sigterm)
        self._old_wakeup_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
        self._signal_thread = threading.Thread(
            target=self._signal_loop, args=(read_fd,), name="spotguard-sigterm", daemon=True
        )
        self._signal_thread.start()

    def _on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        if self._wake is not None:
            with contextlib.suppress(OSError):
                os.write(self._wake[1], _SIGTERM_BYTE)

    def _signal_loop(self, read_fd: int) -> None:
        while True:
            try:
                byte = os.read(read_fd, 1)
            except OSError:
                return
            if byte in (b"", _STOP_BYTE):
                return
            if byte == _SIGTERM_BYTE:
                break
            # the wakeup fd also reports other signals with Python handlers (SIGINT): not ours
        deadline = time.monotonic() + max(0.0, self.grace - EXIT_MARGIN)
        self._terminating.set()
        log.warning("SIGTERM: saving at the next safe point (giving up in %.1f s)", self.grace)
        self._join("sigterm", None, waiter=False)
        if not self._exiting.wait(max(0.0, deadline - time.monotonic())):
            log.error(
                "SIGTERM: no safe point within the grace period; exiting with %d and keeping "
                "the last committed checkpoint",
                YIELD_EXIT_CODE,
            )
            _hard_exit()


_SIGTERM_BYTE = bytes([signal.SIGTERM])  # what the wakeup fd writes for SIGTERM
_STOP_BYTE = b"\xff"  # no signal has this number


def _hard_exit() -> NoReturn:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(YIELD_EXIT_CODE)


def _read_token(env: Mapping[str, str]) -> str | None:
    token = env.get("SPOTGUARD_CHECKPOINT_TOKEN", "").strip()
    if token:
        return token
    path = Path(env.get("SPOTGUARD_CHECKPOINT_TOKEN_FILE", DEFAULT_TOKEN_FILE))
    try:
        token = path.read_text().strip()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise SettingError(
            f"SPOTGUARD_CHECKPOINT_TOKEN_FILE={path}: cannot read it: {exc}"
        ) from exc
    return token or None


def _int_setting(key: str, value: str, minimum: int) -> int:
    try:
        number = int(value)
    except ValueError:
        raise SettingError(f"{key}={value!r}: expected a whole number >= {minimum}") from None
    if number < minimum:
        raise SettingError(f"{key}={value!r}: expected a whole number >= {minimum}")
    return number


def _float_setting(key: str, value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise SettingError(f"{key}={value!r}: expected seconds, e.g. 30 or 2.5") from None
    if not number > 0:
        raise SettingError(f"{key}={value!r}: expected a positive number of seconds")
    return number
