"""The IMDS simulator, over real HTTP with a plain aiohttp client (not spotguard's IMDS client)."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp
import pytest

from spotguard.sim.imds import (
    EVENTS_API_VERSIONS,
    INSTANCE_API_VERSIONS,
    SCENARIOS,
    Fault,
    FaultKind,
    ImdsSimulator,
    SimVm,
    ceil_second,
)
from spotguard.sources.identity import vm_name_from_provider_id

VM0 = "aks-spot-12345678-vmss_0"
VM1 = "aks-spot-12345678-vmss_1"
SE = "/metadata/scheduledevents"
V = "2020-07-01"
H = {"Metadata": "true"}
RFC1123 = re.compile(r"^[A-Z][a-z]{2}, \d{2} [A-Z][a-z]{2} \d{4} \d{2}:\d{2}:\d{2} GMT$")


class FrozenClock:
    def __init__(self, moment: datetime) -> None:
        self.moment = moment

    def now(self) -> datetime:
        return self.moment


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


@pytest.fixture
async def sim() -> AsyncIterator[ImdsSimulator]:
    # A high rate limit so tests can make many requests; the 5 rps rule has its own tests.
    async with ImdsSimulator([VM0, VM1], speedup=20, rate_limit=1000) as simulator:
        yield simulator


async def call(
    session: aiohttp.ClientSession,
    url: str,
    path: str = SE,
    *,
    method: str = "GET",
    version: str | None = V,
    headers: Mapping[str, str] = H,
    params: Mapping[str, str] | None = None,
    body: bytes | None = None,
    timeout: float = 5,
) -> tuple[int, bytes, str]:
    query = dict(params or {})
    if version is not None:
        query["api-version"] = version
    async with session.request(
        method,
        url + path,
        params=query,
        headers=headers,
        data=body,
        timeout=aiohttp.ClientTimeout(total=timeout),
    ) as resp:
        return resp.status, await resp.read(), resp.content_type


async def document(session: aiohttp.ClientSession, url: str, version: str = V) -> dict[str, Any]:
    status, body, _ = await call(session, url, version=version)
    assert status == 200, body
    result: dict[str, Any] = json.loads(body)
    return result


def ack_body(*event_ids: str) -> bytes:
    return json.dumps({"StartRequests": [{"EventId": e} for e in event_ids]}).encode()


# --- request rules ---------------------------------------------------------------------------


@pytest.mark.parametrize("path", [SE, "/metadata/instance", "/metadata/versions"])
async def test_requests_without_metadata_header_are_rejected(
    sim: ImdsSimulator, session: aiohttp.ClientSession, path: str
) -> None:
    version = "2021-02-01" if path == "/metadata/instance" else V
    for headers in ({}, {"Metadata": "false"}):
        status, body, content_type = await call(
            session, sim.url(), path, version=version, headers=headers
        )
        assert status == 400
        assert content_type == "application/json"
        assert "metadata header" in json.loads(body)["error"]
    status, _, _ = await call(
        session, sim.url(), path, version=version, headers={"Metadata": "True"}
    )
    assert status == 200


async def test_requests_with_x_forwarded_for_are_rejected(
    sim: ImdsSimulator, session: aiohttp.ClientSession
) -> None:
    status, body, _ = await call(session, sim.url(), headers={**H, "X-Forwarded-For": "10.0.0.1"})
    assert status == 400
    assert "X-Forwarded-For" in json.loads(body)["error"]


@pytest.mark.parametrize("version", [None, "", "latest", "2021-02-01", "2020-07-02"])
async def test_scheduled_events_need_a_supported_api_version(
    sim: ImdsSimulator, session: aiohttp.ClientSession, version: str | None
) -> None:
    status, body, _ = await call(session, sim.url(), version=version)
    assert status == 400
    error = json.loads(body)
    assert error["error"].startswith("Bad request. api-version is invalid or was not specified")
    assert error["newest-versions"] == ["2020-07-01", "2019-08-01", "2019-04-01"]


async def test_every_scheduled_events_version_is_served(
    sim: ImdsSimulator, session: aiohttp.ClientSession
) -> None:
    for version in EVENTS_API_VERSIONS:
        assert (await document(session, sim.url(), version))["Events"] == []


async def test_repeated_query_parameters_are_rejected(
    sim: ImdsSimulator, session: aiohttp.ClientSession
) -> None:
    async with session.get(f"{sim.url()}{SE}?api-version={V}&api-version={V}", headers=H) as resp:
        assert resp.status == 400


async def test_unknown_paths_and_methods(
    sim: ImdsSimulator, session: aiohttp.ClientSession
) -> None:
    assert (await call(session, sim.url(), "/metadata/nothing"))[0] == 404
    assert (await call(session, sim.url(), method="PUT", body=b"{}"))[0] == 405
    assert (
        await call(session, sim.url(), "/metadata/instance", method="POST", version="2021-02-01")
    )[0] == 405


# --- rate limit and enablement ---------------------------------------------------------------


async def test_more_than_five_requests_per_second_get_429(session: aiohttp.ClientSession) -> None:
    async with ImdsSimulator([VM0]) as sim:
        statuses = [(await call(session, sim.url()))[0] for _ in range(8)]
        assert statuses == [200] * 5 + [429] * 3
        # Every request counts, throttled ones and other /metadata paths included.
        assert (await call(session, sim.url(), "/metadata/versions", version=None))[0] == 429
        await asyncio.sleep(1.05)
        assert (await call(session, sim.url()))[0] == 200
        logged = [r.status for r in sim.requests()]
        assert logged == [*statuses, 429, 200]


async def test_the_rate_limit_is_per_vm(session: aiohttp.ClientSession) -> None:
    async with ImdsSimulator([VM0, VM1]) as sim:
        for _ in range(5):
            assert (await call(session, sim.url(VM0)))[0] == 200
        assert (await call(session, sim.url(VM0)))[0] == 429
        assert (await call(session, sim.url(VM1)))[0] == 200


async def test_enablement_window_answers_410(session: aiohttp.ClientSession) -> None:
    async with ImdsSimulator([VM0, VM1], enablement=0.4, rate_limit=1000) as sim:
        assert (await call(session, sim.url(VM0)))[0] == 410
        assert (await call(session, sim.url(VM0), method="POST", body=ack_body()))[0] == 410
        # Instance metadata is not affected; each VM's window starts with its own first call.
        status, _, _ = await call(session, sim.url(VM0), "/metadata/instance", version="2021-02-01")
        assert status == 200
        await asyncio.sleep(0.45)
        assert (await call(session, sim.url(VM0)))[0] == 200
        assert (await call(session, sim.url(VM1)))[0] == 410


async def test_first_scheduled_events_call_can_be_slow(session: aiohttp.ClientSession) -> None:
    async with ImdsSimulator([VM0], first_call_delay=0.3) as sim:
        loop = asyncio.get_running_loop()
        began = loop.time()
        assert (await call(session, sim.url()))[0] == 200
        assert loop.time() - began >= 0.3
        began = loop.time()
        assert (await call(session, sim.url()))[0] == 200
        assert loop.time() - began < 0.2


# --- the document ----------------------------------------------------------------------------


async def test_fields_follow_the_api_version(
    sim: ImdsSimulator, session: aiohttp.ClientSession
) -> None:
    sim.inject("Preempt", resources=[VM0], not_before_in=30)
    sim.inject("Terminate", resources=[VM0])
    sim.inject("Reboot", resources=[VM1], description="Host server is undergoing maintenance.")

    def types(doc: dict[str, Any]) -> list[str]:
        return [e["EventType"] for e in doc["Events"]]

    old = await document(session, sim.url(), "2017-03-01")
    assert types(old) == ["Reboot"]
    assert old["Events"][0]["Resources"] == ["_" + VM1]  # the preview's underscore prefix
    assert types(await document(session, sim.url(), "2017-11-01")) == ["Preempt", "Reboot"]
    expected_keys = {
        "2019-01-01": set(),
        "2019-04-01": {"Description"},
        "2019-08-01": {"Description", "EventSource"},
        "2020-07-01": {"Description", "EventSource", "DurationInSeconds"},
    }
    base = {"EventId", "EventStatus", "EventType", "ResourceType", "Resources", "NotBefore"}
    for version, extra in expected_keys.items():
        doc = await document(session, sim.url(), version)
        assert types(doc) == ["Preempt", "Terminate", "Reboot"]
        assert all(set(e) == base | extra for e in doc["Events"])
    latest = (await document(session, sim.url()))["Events"]
    assert latest[0]["ResourceType"] == "VirtualMachine"
    assert latest[0]["EventSource"] == "Platform"
    assert latest[0]["DurationInSeconds"] == -1
    assert latest[1]["EventSource"] == "User"
    assert latest[2]["Description"] == "Host server is undergoing maintenance."


async def test_incarnation_changes_only_when_events_change(
    sim: ImdsSimulator, session: aiohttp.ClientSession
) -> None:
    first = (await document(session, sim.url()))["DocumentIncarnation"]
    assert (await document(session, sim.url()))["DocumentIncarnation"] == first
    event = sim.inject("Freeze", resources=[VM0], started_for=10)
    assert (await document(session, sim.url()))["DocumentIncarnation"] == first + 1
    assert (await document(session, sim.url(VM1)))["DocumentIncarnation"] == first + 1
    status, _, _ = await call(session, sim.url(), method="POST", body=ack_body(event.event_id))
    assert status == 200
    started = await document(session, sim.url())
    assert started["DocumentIncarnation"] == first + 2
    # Acknowledging a Started event again changes nothing.
    await call(session, sim.url(), method="POST", body=ack_body(event.event_id))
    assert (await document(session, sim.url()))["DocumentIncarnation"] == first + 2
    sim.cancel(event.event_id)
    assert await document(session, sim.url()) == {
        "DocumentIncarnation": first + 3,
        "Events": [],
    }


async def test_start_requests_start_the_event_which_is_then_removed(
    session: aiohttp.ClientSession,
) -> None:
    async with ImdsSimulator([VM0, VM1], rate_limit=1000) as sim:
        event = sim.inject("Preempt", resources=[VM0], not_before_in=30, started_for=0.4)
        scheduled = (await document(session, sim.url()))["Events"][0]
        assert scheduled["EventStatus"] == "Scheduled"
        assert RFC1123.match(scheduled["NotBefore"])
        # GUIDs compare case-insensitively.
        body = ack_body(event.event_id.lower())
        status, answer, _ = await call(session, sim.url(VM1), method="POST", body=body)
        assert (status, answer) == (200, b"")
        doc = await document(session, sim.url())
        assert doc["Events"][0]["EventStatus"] == "Started"
        assert doc["Events"][0]["NotBefore"] == ""
        [ack] = sim.acknowledgements()
        assert (ack.event_id, ack.vm, ack.started) == (event.event_id, VM1, True)
        await sim.wait_for_change(doc["DocumentIncarnation"], timeout=2)
        assert (await document(session, sim.url()))["Events"] == []


async def test_malformed_start_requests_get_400_and_change_nothing(
    sim: ImdsSimulator, session: aiohttp.ClientSession
) -> None:
    event = sim.inject("Reboot")
    before = sim.incarnation
    bodies = [
        b"not json",
        b"\xff\xfe{}",
        b"{}",
        b'{"StartRequests": {"EventId": "x"}}',
        b'{"StartRequests": [{}]}',
        b'{"StartRequests": [{"EventId": 5}]}',
        b"[]",
        ack_body(event.event_id, "00000000-0000-0000-0000-000000000001"),  # one unknown id
    ]
    for body in bodies:
        status, _, _ = await call(session, sim.url(), method="POST", body=body)
        assert status == 400, body
    headerless = await call(session, sim.url(), method="POST", headers={}, body=ack_body("x"))
    assert headerless[0] == 400
    assert sim.incarnation == before
    assert sim.acknowledgements() == ()
    assert sim.events()[0].status == "Scheduled"


async def test_scheduled_event_starts_by_itself_at_not_before(
    sim: ImdsSimulator, session: aiohttp.ClientSession
) -> None:
    event = sim.inject("Preempt", not_before_in=0.5, started_for=20)
    assert event.not_before is not None
    assert event.not_before.microsecond == 0
    await sim.wait_for_change(sim.incarnation, timeout=3)
    assert datetime.now(UTC) >= event.not_before - timedelta(milliseconds=50)
    [shown] = (await document(session, sim.url()))["Events"]
    assert (shown["EventStatus"], shown["NotBefore"]) == ("Started", "")
    assert sim.acknowledgements() == ()


async def test_cancelled_event_disappears(
    sim: ImdsSimulator, session: aiohttp.ClientSession
) -> None:
    event = sim.inject("Redeploy", resources=[VM1])
    incarnation = (await document(session, sim.url()))["DocumentIncarnation"]
    assert sim.cancel(event.event_id) == event
    doc = await document(session, sim.url())
    assert doc == {"DocumentIncarnation": incarnation + 1, "Events": []}
    with pytest.raises(KeyError):
        sim.cancel(event.event_id)
    with pytest.raises(TypeError, match="one string"):
        sim.inject("Preempt", resources=VM0)


async def test_started_event_can_be_injected_directly(
    sim: ImdsSimulator, session: aiohttp.ClientSession
) -> None:
    # A host failure skips Scheduled: a Reboot appears already Started.
    sim.inject("Reboot", status="Started", started_for=10)
    [shown] = (await document(session, sim.url()))["Events"]
    assert (shown["EventStatus"], shown["NotBefore"]) == ("Started", "")


async def test_not_before_comes_from_the_injected_clock_rounded_up() -> None:
    clock = FrozenClock(datetime(2030, 1, 1, 12, 0, 0, 250_000, tzinfo=UTC))
    async with ImdsSimulator([VM0], clock=clock) as sim:
        shown = sim.inject("Preempt").imds()
        assert shown is not None
        assert shown["NotBefore"] == "Tue, 01 Jan 2030 12:00:31 GMT"
    assert ceil_second(clock.moment.replace(microsecond=0)) == clock.moment.replace(microsecond=0)


async def test_two_vms_share_one_event_list(
    sim: ImdsSimulator, session: aiohttp.ClientSession
) -> None:
    status, body, _ = await call(
        session,
        sim.url(VM0),
        "/control/events",
        method="POST",
        version=None,
        body=json.dumps({"type": "Preempt", "resources": [VM1]}).encode(),
    )
    assert status == 201
    event_id = json.loads(body)["event_id"]
    seen0, seen1 = await document(session, sim.url(VM0)), await document(session, sim.url(VM1))
    assert seen0 == seen1
    assert seen0["Events"][0]["Resources"] == [VM1]
    await call(session, sim.url(VM1), method="POST", body=ack_body(event_id))
    assert (await document(session, sim.url(VM0)))["Events"][0]["EventStatus"] == "Started"
    assert [(a.event_id, a.vm) for a in sim.acknowledgements()] == [(event_id, VM1)]


async def test_wait_for_change_times_out(sim: ImdsSimulator) -> None:
    with pytest.raises(TimeoutError):
        await sim.wait_for_change(sim.incarnation, timeout=0.05)


# --- scenarios -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(SCENARIOS))
async def test_scenarios_keep_real_notice_under_speedup(
    sim: ImdsSimulator, session: aiohttp.ClientSession, name: str
) -> None:
    scenario = SCENARIOS[name]
    before = datetime.now(UTC)
    event_id = sim.play(name, vm=VM1)
    await sim.wait_for_change(sim.incarnation, timeout=1)  # 1 s / 20
    after = datetime.now(UTC)
    [shown] = (await document(session, sim.url(VM0)))["Events"]
    assert shown["EventId"] == event_id
    assert shown["EventType"] == scenario.kind.value.capitalize()
    assert shown["EventStatus"] == "Scheduled"
    notice = timedelta(seconds=scenario.notice_seconds)
    assert notice >= timedelta(seconds=5)
    assert RFC1123.match(shown["NotBefore"])
    not_before = parsedate_to_datetime(shown["NotBefore"])
    assert before + notice <= not_before <= after + notice + timedelta(seconds=1)
    if name == "other-vm":
        assert shown["Resources"] == ["aks-spot-12345678-vmss_2"]  # a VM nobody serves
    else:
        assert shown["Resources"] == [VM1]
    if name == "freeze":
        assert shown["DurationInSeconds"] == 5
    if name == "reboot":
        assert shown["DurationInSeconds"] == 10
    if name == "cancelled":
        await sim.wait_for_change(sim.incarnation, timeout=1)  # 5 s / 20
        assert (await document(session, sim.url()))["Events"] == []


async def test_notice_override_is_explicit(sim: ImdsSimulator) -> None:
    sim.play("reboot", notice=2, appear_after=0)
    await sim.wait_for_change(sim.incarnation, timeout=1)
    [event] = sim.events()
    assert event.not_before is not None
    assert event.not_before - datetime.now(UTC) <= timedelta(seconds=3)
    with pytest.raises(ValueError, match="unknown scenario"):
        sim.play("nope")


# --- faults ----------------------------------------------------------------------------------


async def test_status_faults_answer_then_stop(
    sim: ImdsSimulator, session: aiohttp.ClientSession
) -> None:
    sim.inject("Preempt")
    incarnation = sim.incarnation
    sim.add_fault(Fault(FaultKind.STATUS, status=429, count=2))
    sim.add_fault(Fault(FaultKind.STATUS, status=503))
    statuses = [(await call(session, sim.url()))[0] for _ in range(4)]
    assert statuses == [429, 429, 503, 200]
    assert [r.fault for r in sim.requests()] == ["status", "status", "status", None]
    assert sim.incarnation == incarnation
    assert sim.faults() == ()


async def test_body_faults(sim: ImdsSimulator, session: aiohttp.ClientSession) -> None:
    sim.inject("Preempt")
    sim.add_fault(Fault(FaultKind.HTML, status=500))
    status, body, content_type = await call(session, sim.url())
    assert (status, content_type) == (500, "text/html")
    assert body.startswith(b"<!DOCTYPE html>")

    sim.add_fault(Fault(FaultKind.NON_UTF8))
    status, body, _ = await call(session, sim.url())
    assert status == 200
    with pytest.raises(UnicodeDecodeError):
        body.decode("utf-8")

    sim.add_fault(Fault(FaultKind.TRUNCATED))
    status, body, _ = await call(session, sim.url())
    assert status == 200
    with pytest.raises(json.JSONDecodeError):
        json.loads(body)

    sim.add_fault(Fault(FaultKind.HUGE, size=300_000))
    status, body, _ = await call(session, sim.url())
    assert status == 200
    assert len(body) >= 250_000
    assert len(json.loads(body)["Events"]) > 100

    sim.add_fault(Fault(FaultKind.BODY, body=b'{"DocumentIncarnation": "x"}'))
    assert (await call(session, sim.url()))[:2] == (200, b'{"DocumentIncarnation": "x"}')
    assert len((await document(session, sim.url()))["Events"]) == 1


async def test_delay_fault_provokes_client_timeouts(
    sim: ImdsSimulator, session: aiohttp.ClientSession
) -> None:
    sim.add_fault(Fault(FaultKind.DELAY, delay=5))
    with pytest.raises(TimeoutError):
        await call(session, sim.url(), timeout=0.2)
    assert (await call(session, sim.url()))[0] == 200
    for _ in range(50):  # the abandoned request is logged once its handler ends
        if len(sim.requests()) == 2:
            break
        await asyncio.sleep(0.02)
    first, second = sim.requests()
    assert (first.status, first.fault) == (None, "delay")
    assert second.status == 200


async def test_drop_fault_closes_the_connection(
    sim: ImdsSimulator, session: aiohttp.ClientSession
) -> None:
    # aiohttp retries an idempotent request once after a dropped connection: drop two.
    sim.add_fault(Fault(FaultKind.DROP, count=2))
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await call(session, sim.url())
    assert (await call(session, sim.url()))[0] == 200
    logged = [(r.status, r.fault) for r in sim.requests()]
    assert logged == [(None, "drop"), (None, "drop"), (200, None)]


async def test_faults_by_time_vm_and_method(
    sim: ImdsSimulator, session: aiohttp.ClientSession
) -> None:
    event = sim.inject("Preempt")
    sim.add_fault(Fault(FaultKind.STATUS, status=500, seconds=0.3, vm=VM1, method="POST"))
    assert (await call(session, sim.url(VM0), method="POST", body=ack_body("x")))[0] == 400
    assert (await call(session, sim.url(VM1)))[0] == 200
    for _ in range(3):
        status, _, _ = await call(
            session, sim.url(VM1), method="POST", body=ack_body(event.event_id)
        )
        assert status == 500
    assert sim.acknowledgements() == ()  # a faulted answer changes no state
    assert sim.events()[0].status == "Scheduled"
    await asyncio.sleep(0.35)
    assert (await call(session, sim.url(VM1), method="POST", body=ack_body(event.event_id)))[
        0
    ] == 200


async def test_faults_do_not_hide_request_errors(
    sim: ImdsSimulator, session: aiohttp.ClientSession
) -> None:
    sim.add_fault(Fault(FaultKind.STATUS, status=500))
    assert (await call(session, sim.url(), headers={}))[0] == 400
    assert (await call(session, sim.url()))[0] == 500
    assert sim.clear_faults() == 0


def test_fault_validation() -> None:
    with pytest.raises(ValueError, match="delay"):
        Fault(FaultKind.DELAY)
    with pytest.raises(ValueError, match="count"):
        Fault(FaultKind.STATUS, count=0)
    with pytest.raises(ValueError, match="kind"):
        Fault.from_json({"kind": "explode"})
    fault = Fault.from_json({"kind": "body", "body_base64": "/w==", "count": 2})
    assert (fault.body, fault.count, fault.answer_status) == (b"\xff", 2, 200)


# --- request log -----------------------------------------------------------------------------


async def test_request_log_records_what_matters(session: aiohttp.ClientSession) -> None:
    clock = FrozenClock(datetime(2030, 1, 1, tzinfo=UTC))
    async with ImdsSimulator([VM0, VM1], clock=clock, rate_limit=1000) as sim:
        headers = {
            **H,
            "User-Agent": "probe/1",
            "Via": "1.1 squid",
            "Proxy-Authorization": "Basic eA==",
            "Accept": "*/*",
        }
        await call(session, sim.url(VM1), headers=headers)
        await call(session, sim.url(VM0), headers={})
        await call(session, sim.url(VM0), "/control/state", version=None, headers={})
        first, second = sim.requests()
        assert first.wall == clock.moment
        assert (first.vm, first.method, first.path, first.status) == (VM1, "GET", SE, 200)
        assert first.query == f"api-version={V}"
        assert dict(first.headers) == {
            "Metadata": "true",
            "User-Agent": "probe/1",
            "Via": "1.1 squid",
            "Proxy-Authorization": "Basic eA==",
        }
        assert (second.vm, second.status) == (VM0, 400)
        assert second.loop_time >= first.loop_time
        assert sim.requests(VM1) == (first,)

        status, body, _ = await call(
            session,
            sim.url(VM0),
            "/control/requests",
            version=None,
            headers={},
            params={"vm": VM1},
        )
        assert status == 200
        [logged] = json.loads(body)
        assert logged["wall"] == "2030-01-01T00:00:00.000Z"
        assert logged["headers"]["User-Agent"] == "probe/1"
        await call(session, sim.url(VM0), "/control/requests", method="DELETE", version=None)
        assert sim.requests() == ()


# --- instance metadata -----------------------------------------------------------------------


def leaves(node: Any) -> list[Any]:
    if isinstance(node, dict):
        return [leaf for value in node.values() for leaf in leaves(value)]
    if isinstance(node, list):
        return [leaf for value in node for leaf in leaves(value)]
    return [node]


async def test_instance_metadata_looks_like_an_aks_spot_vm(session: aiohttp.ClientSession) -> None:
    async with ImdsSimulator(["aks-spot-12345678-vmss_10"], rate_limit=1000) as sim:
        status, body, _ = await call(session, sim.url(), "/metadata/instance", version="2021-02-01")
        assert status == 200
        doc = json.loads(body)
        assert all(isinstance(leaf, str) for leaf in leaves(doc))
        compute = doc["compute"]
        assert compute["name"] == "aks-spot-12345678-vmss_10"
        assert compute["vmScaleSetName"] == "aks-spot-12345678-vmss"
        assert compute["osProfile"]["computerName"] == "aks-spot-12345678-vmss00000a"
        assert (compute["priority"], compute["evictionPolicy"]) == ("Spot", "Delete")
        assert compute["resourceGroupName"].startswith("MC_")
        assert compute["resourceId"] == (
            f"/subscriptions/{compute['subscriptionId']}/resourceGroups/"
            f"{compute['resourceGroupName']}/providers/Microsoft.Compute/"
            "virtualMachineScaleSets/aks-spot-12345678-vmss/virtualMachines/10"
        )
        assert "physicalZone" not in compute  # added in 2023-11-15
        assert compute["licenseType"] == ""

        older = json.loads(
            (await call(session, sim.url(), "/metadata/instance", version="2019-08-01"))[1]
        )["compute"]
        assert "priority" not in older
        assert "osProfile" not in older
        assert older["resourceId"] == compute["resourceId"]

        name = "/metadata/instance/compute/osProfile/computerName"
        text = await call(session, sim.url(), name, version="2021-02-01", params={"format": "text"})
        assert text == (200, b"aks-spot-12345678-vmss00000a", "text/plain")
        assert (await call(session, sim.url(), name, version="2021-02-01"))[0] == 400
        ip = "/metadata/instance/network/interface/0/ipv4/ipAddress/0/privateIpAddress"
        ip_text = await call(
            session, sim.url(), ip, version="2025-04-07", params={"format": "text"}
        )
        assert ip_text[0] == 200
        compute_only = await call(session, sim.url(), "/metadata/instance/compute", version=V)
        assert compute_only[0] == 400  # a Scheduled Events version is not an instance version
        missing = "/metadata/instance/compute/nothing"
        assert (await call(session, sim.url(), missing, version="2021-02-01"))[0] == 404


async def test_instance_api_versions(sim: ImdsSimulator, session: aiohttp.ClientSession) -> None:
    status, body, _ = await call(session, sim.url(), "/metadata/instance", version=None)
    assert status == 400
    assert json.loads(body)["newest-versions"] == ["2025-04-07", "2024-07-17", "2024-03-15"]
    status, body, _ = await call(session, sim.url(), "/metadata/versions", version=None)
    assert status == 200
    assert json.loads(body)["apiVersions"] == list(INSTANCE_API_VERSIONS)
    assert "2021-02-01" in INSTANCE_API_VERSIONS


def test_vm_identity() -> None:
    vm = SimVm.from_name("aks-spot-12345678-vmss_35")
    assert vm.computer_name == "aks-spot-12345678-vmss00000z"
    assert vm.nodepool == "spot"
    assert vm.provider_id == (
        f"azure:///subscriptions/{vm.subscription_id}/resourceGroups/"
        "mc_spotguard-rg_spotguard-aks_westeurope/providers/Microsoft.Compute/"
        "virtualMachineScaleSets/aks-spot-12345678-vmss/virtualMachines/35"
    )
    standalone = SimVm.from_name("build-agent")
    assert (standalone.scale_set, standalone.computer_name) == ("", "build-agent")
    assert standalone.resource_id.endswith("/virtualMachines/build-agent")
    # The agent finds each VM's IMDS name in its Node's providerID.
    assert vm_name_from_provider_id(vm.provider_id) == vm.name
    assert vm_name_from_provider_id(standalone.provider_id) == "build-agent"
    assert SimVm.from_name("x_1", zone="3").zone == "3"


# --- control API -----------------------------------------------------------------------------


async def control(
    session: aiohttp.ClientSession, url: str, method: str, path: str, data: Any = None
) -> tuple[int, Any]:
    body = None if data is None else json.dumps(data).encode()
    status, answer, _ = await call(
        session, url, path, method=method, version=None, headers={}, body=body
    )
    return status, json.loads(answer)


async def test_control_api(session: aiohttp.ClientSession) -> None:
    # Default rate limit: control requests are neither limited nor logged.
    async with ImdsSimulator([VM0, VM1], speedup=20) as sim:
        url = sim.url(VM1)
        status, event = await control(session, url, "POST", "/control/events", {"type": "reboot"})
        assert status == 201
        assert (event["event_type"], event["resources"], event["status"]) == (
            "Reboot",
            [VM1],
            "Scheduled",
        )
        not_before = parsedate_to_datetime(event["not_before"])
        assert not_before - datetime.now(UTC) > timedelta(minutes=14)

        path = f"/control/events/{event['event_id']}"
        status, started = await control(session, url, "POST", path + "/start")
        assert (status, started["status"], started["not_before"]) == (200, "Started", "")
        assert (await control(session, url, "DELETE", path))[0] == 200
        assert (await control(session, url, "DELETE", path))[0] == 404
        assert (await control(session, url, "POST", path + "/start"))[0] == 404

        bad = [
            {"type": "Explode"},
            {},
            {"type": "Preempt", "resources": "vm"},
            {"type": "Preempt", "status": "Completed"},
            {"type": "Preempt", "not_before_in": -1},
            {"type": "Preempt", "colour": "red"},
        ]
        for data in bad:
            assert (await control(session, url, "POST", "/control/events", data))[0] == 400, data

        status, fault = await control(
            session, url, "POST", "/control/faults", {"kind": "status", "status": 429}
        )
        assert (status, fault["status"], fault["vm"]) == (201, 429, None)
        assert len((await control(session, url, "GET", "/control/faults"))[1]) == 1
        assert (await control(session, url, "DELETE", "/control/faults"))[1] == {"cleared": 1}
        bad_fault = {"kind": "status", "vm": "nobody"}
        assert (await control(session, url, "POST", "/control/faults", bad_fault))[0] == 400

        scenarios = (await control(session, url, "GET", "/control/scenarios"))[1]
        assert [s["name"] for s in scenarios] == list(SCENARIOS)
        status, played = await control(
            session, url, "POST", "/control/scenario", {"name": "preempt-short"}
        )
        assert status == 202
        await sim.wait_for_change(sim.incarnation, timeout=1)
        status, state = await control(session, url, "GET", "/control/state")
        assert status == 200
        assert [e["EventId"] for e in state["document"]["Events"]] == [played["event_id"]]
        assert state["events"][0]["resources"] == [VM1]  # the port's VM
        assert [v["name"] for v in state["vms"]] == [VM0, VM1]
        assert state["vms"][1]["url"] == url
        assert state["acknowledgements"] == []
        assert (await control(session, url, "POST", "/control/scenario", {"name": "x"}))[0] == 400

        for _ in range(10):
            assert (await control(session, url, "GET", "/control/events"))[0] == 200
        assert sim.requests() == ()


async def test_stop_is_prompt_with_pending_work(session: aiohttp.ClientSession) -> None:
    loop = asyncio.get_running_loop()
    async with ImdsSimulator([VM0]) as sim:
        sim.play("reboot")
        sim.inject("Preempt", not_before_in=1)
        sim.add_fault(Fault(FaultKind.DELAY, delay=30))
        pending = asyncio.create_task(call(session, sim.url(), timeout=10))
        await asyncio.sleep(0.1)
        began = loop.time()
    assert loop.time() - began < 2
    status, _, _ = await pending
    assert status == 200
