"""An emulated Kubernetes API server for the demo and the tests (``spotguard simulate-cluster``).

Real clients (kubernetes-asyncio, ``kubectl``, including ``kubectl drain``) talk HTTP to it on
127.0.0.1. It is built on kmock (pinned exactly): the HTTP handler is a
``kmock.KubernetesScaffold`` subclass, so in-process tests can still script answers with kmock's
DSL (``emulator.kmock[...] << 429``). Everything else is this package's own:

- ``kube_api``/``kube_watch``: REST and watch semantics over ``kube_store``
- ``kube_controllers``: kubelet, scheduler, ReplicaSet and disruption-controller stand-ins
- ``kube_faults``/``kube_request_log``: fault scripting and the request log, also reachable from
  another process under ``/_sim/`` (see ``cluster_control``)

kmock's matcher costs time in proportion to the requests it has recorded, so requests are only
recorded for it, and routed through it, while kmock reactions are registered. What is and is
not modelled: ``docs/emulator.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import kmock
import yaml
from aiohttp import web

from spotguard.clock import Clock, SystemClock, rfc3339
from spotguard.observability.logging import configure_logging, get_logger
from spotguard.sim.cluster_control import ControlEndpoints
from spotguard.sim.cluster_scenarios import SCENARIOS
from spotguard.sim.kube_api import KubeApi, Reply, json_reply
from spotguard.sim.kube_controllers import ClusterControllers
from spotguard.sim.kube_errors import ApiError, reason_for, status_object
from spotguard.sim.kube_faults import FaultTable
from spotguard.sim.kube_paths import BadQuery, RequestInfo, parse_request
from spotguard.sim.kube_request_log import RequestLog, RequestRecord
from spotguard.sim.kube_resources import SERVER_VERSION, Catalogue
from spotguard.sim.kube_settings import EmulatorSettings
from spotguard.sim.kube_store import ObjectStore
from spotguard.sim.kube_validation import prepare_for_create, validate
from spotguard.sim.kube_watch import stream, watch_request

BUILTIN_NAMESPACES = ("default", "kube-node-lease", "kube-public", "kube-system")
_TEXT = {"Content-Type": "text/plain; charset=utf-8"}
_ROOT_PATHS = (
    "/api",
    "/api/v1",
    "/apis",
    "/healthz",
    "/livez",
    "/openapi/v3",
    "/readyz",
    "/version",
)


class _KmockHandler(kmock.KubernetesScaffold):
    """kmock's handler, reduced to its DSL: every request goes to the emulator first."""

    def __init__(self, emulator: ClusterEmulator) -> None:
        super().__init__()
        self._emulator = emulator

    def __attrs_post_init__(self) -> None:
        pass  # no scaffold fallbacks: the emulator serves discovery itself

    async def __call__(self, raw: web.BaseRequest) -> web.StreamResponse:
        return await self._emulator.handle(raw)

    def has_reactions(self) -> bool:
        return bool(self._payloads)

    async def react(self, raw: web.BaseRequest) -> web.StreamResponse | None:
        """Answer through kmock's matcher if a registered reaction matches, else None."""
        request = await kmock.Request._parse(raw, id=len(self._requests))
        self._requests.append(request)
        try:
            response: web.StreamResponse = await kmock.RawHandler._handle(self, request)
        except NotImplementedError:  # no reaction matched
            return None
        return response


class ClusterEmulator:
    """The emulated API server. ``async with ClusterEmulator() as emu:`` serves on 127.0.0.1."""

    def __init__(
        self,
        *,
        settings: EmulatorSettings | None = None,
        clock: Clock | None = None,
        watch_log_size: int = 10_000,
        request_log_size: int = 100_000,
    ) -> None:
        self.settings = settings or EmulatorSettings()
        self.clock: Clock = clock or SystemClock()
        self.catalogue = Catalogue()
        self.store = ObjectStore(clock=self.clock, log_size=watch_log_size)
        self.api = KubeApi(store=self.store, catalogue=self.catalogue, clock=self.clock)
        self.controllers = ClusterControllers(
            store=self.store, catalogue=self.catalogue, settings=self.settings, clock=self.clock
        )
        self.faults = FaultTable()
        self.requests = RequestLog(request_log_size)
        self.kmock = _KmockHandler(self)
        self._control = ControlEndpoints(self)
        self._log = get_logger(component="simulate-cluster")
        self._runner: web.ServerRunner | None = None
        self._stopping = asyncio.Event()
        self._started_at = 0.0
        self._url = ""
        for name in BUILTIN_NAMESPACES:
            self.seed({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})

    # --- lifecycle ------------------------------------------------------------------------

    @property
    def url(self) -> str:
        if not self._url:
            raise RuntimeError("the emulator is not serving")
        return self._url

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        await self.kmock.__aenter__()
        server = web.Server(self.kmock, handler_cancellation=True)
        self._runner = web.ServerRunner(server, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        bound_host, bound_port = self._runner.addresses[0][:2]
        self._started_at = asyncio.get_running_loop().time()
        self._url = f"http://{bound_host}:{bound_port}"
        self._log.info("listening", url=self._url)
        return self._url

    async def stop(self) -> None:
        self._stopping.set()
        self.store.wake_all()
        self.controllers.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
            await self.kmock.__aexit__(None, None, None)
        self._url = ""

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # --- seeding --------------------------------------------------------------------------

    def seed(self, *objects: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Store objects with the status they carry (a create would reset it).

        Create defaults apply (pod spec defaults, Pending when no status is given); a missing
        namespace is created. Raises ValueError for an unknown kind or an object the apiserver
        would reject, ApiError (409) for one that exists.
        """
        created = []
        for given in objects:
            obj = json.loads(json.dumps(given))  # own a deep copy
            rtype = self.catalogue.for_kind(str(obj.get("apiVersion")), str(obj.get("kind")))
            if rtype is None:
                raise ValueError(f"unknown kind {obj.get('apiVersion')}/{obj.get('kind')}")
            meta = obj.setdefault("metadata", {})
            if rtype.namespaced:
                namespace = meta.setdefault("namespace", "default")
                if self.store.get(self.api.namespaces, None, namespace) is None:
                    self.seed(
                        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}
                    )
            given_status = obj.get("status")
            obj = prepare_for_create(rtype, obj)
            if given_status is not None:
                obj["status"] = given_status
            causes = validate(rtype, obj)
            if causes:
                raise ValueError(f"invalid {rtype.kind} {meta.get('name')!r}: {causes}")
            created.append(self.store.create(rtype, obj).obj)
        return created

    # --- HTTP -----------------------------------------------------------------------------

    async def handle(self, raw: web.BaseRequest) -> web.StreamResponse:
        if raw.path.startswith("/_sim/"):
            return await self._control.handle(raw)
        call = self._begin(raw)
        if call.info is None:
            return call.finish(json_reply(400, status_object(400, call.error, "BadRequest")))
        if self.kmock.has_reactions():
            response = await self.kmock.react(raw)
            if response is not None:
                call.fault = "kmock"
                call.record(response.status)
                return response
        rule = self.faults.take(call.info, call.user_agent) if self.faults else None
        if rule is not None:
            call.fault = str(rule.id)
            try:
                await asyncio.sleep(rule.delay)
            except asyncio.CancelledError:
                call.record(0)  # the client gave up while the fault held the request
                raise
            if rule.drop:
                call.record(0)
                if raw.transport is not None:
                    raw.transport.abort()
                raise asyncio.CancelledError  # nothing is sent: the client sees the connection drop
            if rule.status is not None:
                message = rule.message or f"injected fault {rule.id}"
                details = None
                if rule.retry_after is not None:  # as API Priority and Fairness answers
                    details = {"retryAfterSeconds": rule.retry_after}
                status = status_object(rule.status, message, reason_for(rule.status), details)
                reply = json_reply(rule.status, status)
                if rule.retry_after is not None:
                    reply.headers["Retry-After"] = str(rule.retry_after)
                return call.finish(reply)
            # A delay only: now serve it.
        return await self._serve(call)

    def _begin(self, raw: web.BaseRequest) -> _Call:
        loop = asyncio.get_running_loop()
        query = {k: raw.query.getone(k) for k in raw.query}
        call = _Call(
            emulator=self,
            raw=raw,
            query=query,
            seq=self.requests.allocate(),
            at=rfc3339(self.clock.now()) or "",
            started=loop.time(),
        )
        try:
            call.info = parse_request(raw.method, raw.path, query)
        except BadQuery as exc:
            call.error = str(exc)
        return call

    async def _serve(self, call: _Call) -> web.StreamResponse:
        info, raw = call.info, call.raw
        assert info is not None
        try:
            if info.is_resource and info.verb == "watch":
                return await self._watch(call, info)
            body = await self._json_body(raw)
            if info.is_resource:
                content_type = raw.headers.get("Content-Type", "")
                reply = self.api.handle(info, call.query, body, content_type)
            else:
                reply = self._non_resource(raw)
        except ApiError as exc:
            reply = json_reply(exc.code, exc.status())
            if exc.retry_after is not None:
                reply.headers["Retry-After"] = str(exc.retry_after)
        except Exception as exc:  # a bug here must reach the client as a 500, not a hang
            self._log.exception("request_failed", path=raw.path, method=raw.method)
            reply = json_reply(500, status_object(500, f"emulator error: {exc!r}", "InternalError"))
        return call.finish(reply)

    async def _watch(self, call: _Call, info: RequestInfo) -> web.StreamResponse:
        rtype = self.api.resource(info)
        request = watch_request(rtype, info, call.query, self.settings)
        response = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(call.raw)
        call.record(200)
        try:
            async for line in stream(self.store, request, self._stopping):
                await response.write(line)
            await response.write_eof()
        except ConnectionError:
            pass  # the client went away
        return response

    async def _json_body(self, raw: web.BaseRequest) -> Any:
        data = await raw.read()
        if not data or raw.method in ("GET", "HEAD"):
            return None
        media = raw.headers.get("Content-Type", "application/json").split(";")[0].strip().lower()
        if media == "application/yaml" and raw.method != "PATCH":
            try:
                return yaml.safe_load(data)
            except yaml.YAMLError:
                raise ApiError(400, "the request body is not valid YAML") from None
        if raw.method != "PATCH" and media not in ("application/json", "*/*", ""):
            # No protobuf here. (kubectl's imperative generators send it; see docs/emulator.md.)
            raise ApiError(
                415,
                f'the body of the request was in an unknown format ("{media}") - accepted media '
                "types include: application/json, application/yaml",
            )
        try:
            return json.loads(data)
        except ValueError:
            raise ApiError(400, "the request body is not valid JSON") from None

    def _non_resource(self, raw: web.BaseRequest) -> Reply:
        if raw.method not in ("GET", "HEAD"):
            raise ApiError(405, "the server does not allow this method on the requested resource")
        path = raw.path.rstrip("/") or "/"
        parts = path.strip("/").split("/")
        cat = self.catalogue
        if path == "/":
            return json_reply(200, {"paths": sorted(_ROOT_PATHS)})
        if path in ("/healthz", "/livez", "/readyz"):
            return Reply(200, b"ok", dict(_TEXT))
        if path == "/version":
            return json_reply(200, SERVER_VERSION)
        if path == "/api":
            return json_reply(200, cat.api_versions(raw.host))
        if path == "/apis":
            return json_reply(200, cat.api_group_list())
        if parts[0] == "api" and len(parts) == 2 and cat.has_group_version("", parts[1]):
            return json_reply(200, cat.api_resource_list("", parts[1]))
        if parts[0] == "apis" and len(parts) == 2 and cat.has_group(parts[1]):
            return json_reply(200, cat.api_group(parts[1]))
        if parts[0] == "apis" and len(parts) == 3 and cat.has_group_version(parts[1], parts[2]):
            return json_reply(200, cat.api_resource_list(parts[1], parts[2]))
        if path == "/openapi/v3":
            return json_reply(200, cat.openapi_index())
        rest = parts[2:] if parts[:2] == ["openapi", "v3"] else []
        if rest[:1] == ["api"] and len(rest) == 2 and cat.has_group_version("", rest[1]):
            return json_reply(200, cat.openapi_group_version("", rest[1]))
        if rest[:1] == ["apis"] and len(rest) == 3 and cat.has_group_version(rest[1], rest[2]):
            return json_reply(200, cat.openapi_group_version(rest[1], rest[2]))
        return Reply(404, b"404 page not found\n", dict(_TEXT))

    def _record(self, call: _Call, status: int) -> None:
        raw, info = (
            call.raw,
            call.info or RequestInfo(path=call.raw.path, verb=call.raw.method.lower()),
        )
        now = asyncio.get_running_loop().time()
        # RBAC sees no name on create (resourceNames cannot restrict it), except on subresources.
        name = None if info.verb == "create" and not info.subresource else info.name
        self.requests.append(
            RequestRecord(
                seq=call.seq,
                at=call.at,
                t=round(call.started - self._started_at, 6),
                method=raw.method,
                path=raw.path,
                verb=info.verb,
                resource_request=info.is_resource,
                group=info.group,
                version=info.version,
                resource=info.resource,
                subresource=info.subresource,
                namespace=info.namespace,
                name=name,
                status=status,
                content_type=raw.headers.get("Content-Type") if raw.method == "PATCH" else None,
                user_agent=call.user_agent,
                fault=call.fault,
                duration_ms=round((now - call.started) * 1000, 3),
            )
        )


@dataclass(slots=True)
class _Call:
    """One request on its way through the emulator, until it is recorded."""

    emulator: ClusterEmulator
    raw: web.BaseRequest
    query: dict[str, str]
    seq: int
    at: str
    started: float
    info: RequestInfo | None = None
    error: str = ""
    fault: str | None = None

    @property
    def user_agent(self) -> str:
        return self.raw.headers.get("User-Agent", "")

    def record(self, status: int) -> None:
        self.emulator._record(self, status)

    def finish(self, reply: Reply) -> web.Response:
        self.record(reply.status)
        return web.Response(status=reply.status, body=reply.body, headers=reply.headers)


# --- command line -------------------------------------------------------------------------


def kubeconfig(url: str, *, name: str = "spotguard-sim") -> dict[str, Any]:
    """A kubeconfig for plain http and no credentials."""
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": name, "cluster": {"server": url}}],
        "users": [{"name": name, "user": {}}],
        "contexts": [
            {"name": name, "context": {"cluster": name, "user": name, "namespace": "default"}}
        ],
        "current-context": name,
        "preferences": {},
    }


def write_kubeconfig(path: Path, url: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(kubeconfig(url), sort_keys=False))


async def serve(args: argparse.Namespace, scenario: Iterable[Mapping[str, Any]]) -> int:
    log = get_logger(component="simulate-cluster")
    emulator = ClusterEmulator()
    try:
        url = await emulator.start("127.0.0.1", args.port)
    except OSError as exc:
        log.error("cannot_listen", port=args.port, error=str(exc))
        return 1
    try:
        emulator.seed(*scenario)
        write_kubeconfig(args.kubeconfig, url)
        line = {
            "event": "listening",
            "url": url,
            "kubeconfig": str(args.kubeconfig),
            "scenario": args.scenario,
        }
        print(json.dumps(line), flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()
        log.info("stopping")
    finally:
        await emulator.stop()
        # After stop: requests still in flight (watches, delayed answers) are logged by then.
        if args.request_log is not None:
            _write_request_log(emulator, args.request_log)
    return 0


def _write_request_log(emulator: ClusterEmulator, path: Path) -> None:
    log = get_logger(component="simulate-cluster")
    try:
        count = emulator.requests.write_jsonl(path)
    except OSError as exc:
        log.error("request_log_not_written", path=str(path), error=str(exc))
    else:
        log.info("request_log_written", path=str(path), requests=count)


def main(args: argparse.Namespace) -> int:
    configure_logging(fmt="json", level=getattr(args, "log_level", None) or "info")
    builder = SCENARIOS.get(args.scenario)
    if builder is None:
        print(
            f"spotguard: unknown scenario {args.scenario!r}; known: {', '.join(sorted(SCENARIOS))}",
            file=sys.stderr,
        )
        return 2
    return asyncio.run(serve(args, builder()))
