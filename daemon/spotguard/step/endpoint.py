"""The pod's checkpoint endpoint: ``POST <path>`` with a bearer token, stdlib ``http.server``.

It only authenticates and parses; what a valid request does is the callback's business. Order of
checks: path (404), method (405), token (401), body (411/413/400), then the callback. Any other
failure answers 500; nothing a client sends can stop the server or the step.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

log = logging.getLogger("spotguard.step")

#: the largest request body accepted; the real one is about 200 bytes
MAX_BODY = 64 * 1024
#: seconds a client may take to send its request (slow clients must not pin a thread forever)
CLIENT_TIMEOUT = 10.0

Respond = Callable[[int, dict[str, Any]], None]


@dataclass(frozen=True)
class CheckpointRequest:
    event_id: str
    kind: str
    node: str
    deadline: datetime  # timezone-aware


def parse_request(body: bytes) -> CheckpointRequest:
    """The request body as DESIGN.md defines it; ValueError says what is wrong."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"body is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ValueError("body must be a JSON object")  # noqa: TRY004 (one error type: 400)
    fields: dict[str, str] = {}
    for key in ("event_id", "kind", "node", "deadline"):
        value = doc.get(key)
        if not isinstance(value, str) or not value:
            raise ValueError(f"{key!r} must be a non-empty string")
        fields[key] = value
    try:
        deadline = datetime.fromisoformat(fields["deadline"])
    except ValueError:
        raise ValueError(f"'deadline' is not an RFC 3339 time: {fields['deadline']!r}") from None
    if deadline.tzinfo is None:
        raise ValueError("'deadline' needs a time zone (e.g. a trailing Z)")
    return CheckpointRequest(fields["event_id"], fields["kind"], fields["node"], deadline)


class CheckpointEndpoint:
    """Serves in a daemon thread until ``stop()``; ``on_request`` runs in the request's thread
    and must call ``respond`` exactly once."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        path: str,
        token: str,
        on_request: Callable[[CheckpointRequest, Respond], None],
    ) -> None:
        if not token:
            raise ValueError("the checkpoint endpoint needs a token")
        self.path = path
        self._token = token.encode()
        self._on_request = on_request
        server_class = _Server6 if ":" in host else _Server
        self._server = server_class((host, port), _Handler)
        self._server.endpoint = self
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name="spotguard-checkpoint-endpoint",
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=2.0)
        self._server.server_close()

    def token_ok(self, header: str | None) -> bool:
        if not header:
            return False
        scheme, _, credentials = header.partition(" ")
        if scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(credentials.strip().encode(), self._token)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    endpoint: CheckpointEndpoint

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hangs up mid-request is not worth a traceback on the step's stderr.
        log.debug("checkpoint endpoint: error serving %s", client_address, exc_info=True)


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "spotguard-step"
    sys_version = ""
    timeout = CLIENT_TIMEOUT

    def do_POST(self) -> None:
        self._dispatch()

    def __getattr__(self, name: str) -> Any:
        # Every other method (GET, PUT, DELETE, made-up ones) is answered too, not with 501.
        if name.startswith("do_"):
            return self._dispatch
        raise AttributeError(name)

    def _dispatch(self) -> None:
        try:
            self._serve()
        except (BrokenPipeError, ConnectionResetError):
            # The agent gave up waiting (its checkpoint deadline passed) and hung up: the save
            # goes on regardless; there is no one to answer.
            log.info("checkpoint endpoint: the client hung up before the answer")
        except Exception:
            log.exception("checkpoint endpoint: unexpected error")
            with contextlib.suppress(OSError):
                self._send(500, {"error": "internal error"})

    def _serve(self) -> None:
        endpoint = self.server.endpoint
        if urlsplit(self.path).path != endpoint.path:
            self._send(404, {"error": "not found"})
            return
        if self.command != "POST":
            self._send(405, {"error": "method not allowed"}, {"Allow": "POST"})
            return
        if not endpoint.token_ok(self.headers.get("Authorization")):
            log.warning(
                "checkpoint request from %s refused: missing or wrong token", self.client_address[0]
            )
            self._send(401, {"error": "unauthorized"}, {"WWW-Authenticate": "Bearer"})
            return
        length_header = self.headers.get("Content-Length")
        if length_header is None:
            self._send(411, {"error": "Content-Length required"})
            return
        try:
            length = int(length_header)
        except ValueError:
            self._send(400, {"error": "invalid Content-Length"})
            return
        if length < 0 or length > MAX_BODY:
            self._send(413, {"error": f"body must be at most {MAX_BODY} bytes"})
            return
        try:
            body = self.rfile.read(length)
        except TimeoutError:
            self._send(408, {"error": "request body not received in time"})
            return
        try:
            request = parse_request(body)
        except ValueError as exc:
            self._send(400, {"error": str(exc)})
            return
        answered = False

        def respond(status: int, doc: dict[str, Any]) -> None:
            nonlocal answered
            if not answered:
                answered = True
                self._send(status, doc)

        endpoint._on_request(request, respond)
        if not answered:
            self._send(500, {"error": "no answer"})

    def _send(
        self, status: int, doc: dict[str, Any], headers: dict[str, str] | None = None
    ) -> None:
        body = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        self.wfile.flush()
        self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("checkpoint endpoint: " + format, *args)
