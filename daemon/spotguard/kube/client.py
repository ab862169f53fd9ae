"""The Kubernetes API, as plain JSON over kubernetes-asyncio's connection.

kubernetes-asyncio brings configuration (kubeconfig or in-cluster service account), TLS, tokens
and the connection pool. Requests go through its ``ApiClient`` with ``_preload_content=False`` and
the answers are read here as plain dicts:

- every call carries an explicit timeout (the library's default is none at all);
- a malformed or unexpected object from the API server is a ``KubeError`` for that call, not a
  model-validation exception from deep inside the client (its models reject responses that lack
  fields they consider required);
- parsing 110 pods as JSON costs a fraction of building 110 model objects, on the drain's hot path.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
from kubernetes_asyncio import client as k8s
from kubernetes_asyncio import config as k8s_config
from kubernetes_asyncio.config.config_exception import ConfigException

from spotguard import __version__
from spotguard.errors import SpotguardError
from spotguard.httpio import BodyTooLarge, read_capped

JSON = dict[str, Any]

SMP = "application/strategic-merge-patch+json"
MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"

#: Refuse absurd answers before parsing them (a node list of 5,000 pods is ~40 MB).
MAX_BODY_BYTES = 256 << 20


class KubeError(SpotguardError):
    """An API call failed. ``status`` 0 means no HTTP answer (timeout, connection)."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        reason: str = "",
        body: JSON | None = None,
        retry_after: float | None = None,
    ) -> None:
        head = " ".join(p for p in (str(status) if status else "no answer", reason) if p)
        super().__init__(f"{head}: {message}")
        self.status = status
        self.reason = reason
        self.body = body or {}
        self.retry_after = retry_after

    @property
    def causes(self) -> list[str]:
        details = self.body.get("details")
        causes = details.get("causes") if isinstance(details, dict) else None
        if not isinstance(causes, list):
            return []
        return [str(c.get("reason", "")) for c in causes if isinstance(c, dict)]

    @property
    def transient(self) -> bool:
        """Worth retrying: no answer, throttled, or a server-side error."""
        return self.status == 0 or self.status == 429 or self.status >= 500


@dataclass(frozen=True, slots=True)
class WatchEvent:
    type: str  # ADDED, MODIFIED, DELETED, BOOKMARK, ERROR
    object: JSON


def _retry_after(headers: Mapping[str, str]) -> float | None:
    try:
        value = float(headers.get("Retry-After", ""))
    except ValueError:
        return None
    return value if 0 <= value <= 600 else None


class KubeClient:
    def __init__(self, api: k8s.ApiClient, *, timeout: float) -> None:
        self._api = api
        self.timeout = timeout

    @property
    def host(self) -> str:
        return str(self._api.configuration.host)

    async def close(self) -> None:
        await self._api.close()

    async def _send(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str | int | bool] | None,
        body: Any,
        content_type: str | None,
        timeout: float | aiohttp.ClientTimeout,
    ) -> aiohttp.ClientResponse:
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type or "application/json"
        params = [
            (k, str(v).lower() if isinstance(v, bool) else str(v)) for k, v in (query or {}).items()
        ]
        try:
            response: aiohttp.ClientResponse = await self._api.call_api(
                path,
                method,
                query_params=params,
                header_params=headers,
                body=body,
                auth_settings=["BearerToken"],
                _preload_content=False,
                _request_timeout=timeout,
            )
        except aiohttp.ClientError as exc:
            raise KubeError(0, f"{method} {path}: {exc}") from exc
        return response

    async def request(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str | int | bool] | None = None,
        body: Any = None,
        content_type: str | None = None,
        timeout: float | None = None,
    ) -> JSON:
        """One call; the answer's JSON object, or ``KubeError``."""
        limit = self.timeout if timeout is None else timeout
        try:
            async with asyncio.timeout(limit):
                response = await self._send(
                    method, path, query=query, body=body, content_type=content_type, timeout=limit
                )
                async with response:
                    try:
                        raw = await read_capped(response, MAX_BODY_BYTES)
                    except BodyTooLarge as exc:
                        raise KubeError(response.status, f"{method} {path}: {exc}") from None
                    status, headers = response.status, response.headers
        except TimeoutError:
            raise KubeError(0, f"{method} {path}: no answer within {limit:g}s") from None
        except aiohttp.ClientError as exc:
            raise KubeError(0, f"{method} {path}: {exc}") from exc
        data = _json_object(raw)
        if not 200 <= status < 300:
            status_body = data or {}
            message = status_body.get("message") or raw[:200].decode("utf-8", "replace")
            raise KubeError(
                status,
                str(message),
                reason=str(status_body.get("reason", "")),
                body=status_body,
                retry_after=_retry_after(headers),
            )
        if data is None:
            raise KubeError(status, f"{method} {path}: answer is not a JSON object")
        return data

    async def watch(
        self,
        path: str,
        *,
        query: Mapping[str, str | int | bool],
        timeout_seconds: int,
    ) -> AsyncGenerator[WatchEvent, None]:
        """Stream a watch until the server ends it (``timeoutSeconds``) or it fails.

        Lines that are not valid watch events end the stream with ``KubeError``; the caller
        re-lists and watches again, as after a 410.
        """
        params = {**query, "watch": True, "timeoutSeconds": timeout_seconds}
        # The server ends the stream after timeout_seconds; the client gives it a little more,
        # and bounds each read so a silent, half-open connection cannot hang the caller.
        limit = aiohttp.ClientTimeout(total=timeout_seconds + 5, sock_read=timeout_seconds + 5)
        try:
            response = await self._send(
                "GET", path, query=params, body=None, content_type=None, timeout=limit
            )
        except TimeoutError:
            raise KubeError(0, f"watch {path}: no answer") from None
        async with response:
            if response.status != 200:
                try:
                    data = _json_object(await read_capped(response, 1 << 20)) or {}
                except BodyTooLarge:
                    data = {}
                raise KubeError(
                    response.status,
                    str(data.get("message", "watch refused")),
                    reason=str(data.get("reason", "")),
                    body=data,
                )
            try:
                async for line in response.content:
                    if not line.strip():
                        continue
                    event = _json_object(line) or {}
                    kind, obj = event.get("type"), event.get("object")
                    if not isinstance(kind, str) or not isinstance(obj, dict):
                        raise KubeError(200, f"watch {path}: malformed event line")
                    if kind == "ERROR":
                        raise KubeError(
                            int(obj.get("code", 500)),
                            str(obj.get("message", "watch error")),
                            reason=str(obj.get("reason", "")),
                            body=obj,
                        )
                    yield WatchEvent(kind, obj)
            except (TimeoutError, aiohttp.ClientError) as exc:
                raise KubeError(0, f"watch {path}: {exc}") from exc


def _json_object(raw: bytes) -> JSON | None:
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


def user_agent(command: str) -> str:
    """``spotguard/<version> (<command>)``: API server audit logs and APF flow schemas can tell
    the agent from queue mode (kubernetes-asyncio's default names only the library)."""
    return f"spotguard/{__version__} ({command})"


async def connect(
    *, kubeconfig: str | None, timeout: float, agent: str = user_agent("client")
) -> KubeClient:
    """From ``kubeconfig`` (or ``$KUBECONFIG``), else the in-cluster service account.

    ``agent`` is the User-Agent header of every request."""
    configuration = k8s.Configuration()
    path = kubeconfig or os.environ.get("KUBECONFIG")
    try:
        if path:
            await k8s_config.load_kube_config(
                config_file=path, client_configuration=configuration, persist_config=False
            )
        else:
            k8s_config.load_incluster_config(  # type: ignore[no-untyped-call]
                client_configuration=configuration
            )
    except (ConfigException, OSError) as exc:
        raise KubeError(0, f"no Kubernetes configuration: {exc}") from exc
    api = k8s.ApiClient(configuration)
    api.user_agent = agent
    return KubeClient(api, timeout=timeout)
