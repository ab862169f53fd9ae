"""What ``spotguard run`` costs on every spot node: memory, CPU and import time. Tables, not a test.

Four parts, in this order, so that no part competes with another for the CPU:

1. **Idle agent.** Starts the IMDS simulator (one VM), the emulated API server (scenario
   ``spot-node``) and the real agent (``python -m spotguard run``, default settings: 1 s polling,
   JSON logs at info), all as child processes on 127.0.0.1. Once ``/readyz`` answers 200, it
   samples the agent's ``/proc/PID/status`` (VmRSS, VmHWM, RssAnon, RssFile) once a second for
   ``--seconds`` and reads its CPU time (utime + stime from ``/proc/PID/stat``) at both ends. CPU
   per poll divides that CPU time by the Scheduled Events GETs the simulator logged for the VM in
   the same window. Then the cost of one ``/metrics`` scrape and one ``/readyz`` probe (what
   Prometheus and the kubelet add on top), with the idle rate subtracted.
2. **Drain.** Fills the agent's node up to 110 pods (the ``cluster_workloads.loaded_node`` mix,
   every pod stopping 1 s after it is asked to), schedules a Preempt at the simulator and samples
   the agent ten times a second until it logs ``notice_drained`` (or the node has no evictable
   pod left); then RSS for a few seconds after the drain, and the peak (VmHWM).
3. **What takes the memory.** RSS of a fresh interpreter after importing each layer of the
   agent's dependencies in turn (median of 3 interpreters per row), then each library alone, and
   ``spotguard.app`` with kubernetes-asyncio replaced by a stub: what a 64 MiB agent would weigh.
4. **Import time.** ``python -X importtime -c "import spotguard.app"``, medians of 3 runs:
   the packages by inclusive (cumulative) and exclusive time, and the slowest modules.

Every child is stopped on the way out, on errors, Ctrl-C and SIGTERM too. Takes about two
minutes with the defaults. Usage::

    .venv/bin/python bench/footprint.py [--seconds 60] [--pods 110] [--notice 20]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from spotguard.sim.child_process import child_env, free_port, spawn, stop_process, wait_ready
from spotguard.sim.cluster_process import ClusterProcess
from spotguard.sim.cluster_scenarios import SPOT_NODE
from spotguard.sim.cluster_workloads import loaded_node
from spotguard.sim.imds_process import ImdsControl, ImdsProcess

NODE = SPOT_NODE  # aks-spot-12345678-vmss000000; its providerID names IMDS VM ..._0
REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024

CHILD_START_TIMEOUT = 30.0
AGENT_READY_TIMEOUT = 30.0
#: After /readyz, the agent has just resolved its identity and made its first polls; the
#: window starts once that one-off work is behind it.
SETTLE = 3.0
CALL_TIMEOUT = aiohttp.ClientTimeout(total=5)
#: Probes and scrapes sent back to back to measure the cost of one (CPU time is counted in
#: clock ticks, 10 ms each at the usual 100 Hz, so one request alone would read as 0 or 10 ms).
PROBES = 200
#: How long the drain may take beyond NotBefore before the bench gives up on it.
DRAIN_GRACE = 15.0
AFTER_DRAIN = 5.0
DRAIN_SAMPLE = 0.1
IMPORT_REPEATS = 3
IMPORT_TIMEOUT = 60.0
MIB = 1024.0


# --- /proc -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Mem:
    """KiB, from /proc/PID/status."""

    rss: int
    hwm: int
    anon: int
    file: int
    threads: int


def read_mem(pid: int) -> Mem:
    values: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            key, _, rest = line.partition(":")
            if key in {"VmRSS", "VmHWM", "RssAnon", "RssFile", "Threads"}:
                values[key] = int(rest.split()[0])
    return Mem(
        rss=values["VmRSS"],
        hwm=values["VmHWM"],
        anon=values["RssAnon"],
        file=values["RssFile"],
        threads=values["Threads"],
    )


def read_cpu(pid: int) -> float:
    """User + system CPU seconds of the process so far."""
    with open(f"/proc/{pid}/stat") as stat:
        text = stat.read()
    # The command name (field 2) may hold spaces and parentheses; the fields after the last ")"
    # are fixed: state is field 3, utime 14 and stime 15.
    fields = text[text.rfind(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def mib(kib: float) -> str:
    return f"{kib / MIB:.1f}"


# --- the agent's log ------------------------------------------------------------------------


@dataclass
class AgentLog:
    """What the bench reads from the agent's JSON log on stderr."""

    lines: int = 0
    tail: collections.deque[str] = field(default_factory=lambda: collections.deque(maxlen=30))
    drain: dict[str, Any] | None = None
    drained: asyncio.Event = field(default_factory=asyncio.Event)

    async def follow(self, stream: asyncio.StreamReader) -> None:
        # Read to the end, always: a full pipe would block the agent's logging.
        while raw := await stream.readline():
            self.lines += 1
            text = raw.decode("utf-8", "replace").rstrip()
            self.tail.append(text)
            with contextlib.suppress(json.JSONDecodeError):
                line = json.loads(text)
                if isinstance(line, dict) and line.get("event") in {
                    "notice_drained",
                    "notice_drain_incomplete",
                }:
                    self.drain = line
                    self.drained.set()


# --- the agent run ---------------------------------------------------------------------------


@dataclass
class AgentResults:
    ready_s: float = 0.0
    idle_samples: list[Mem] = field(default_factory=list)
    idle_wall: float = 0.0
    idle_cpu: float = 0.0
    idle_polls: int = 0
    idle_log_lines: int = 0
    idle_api_requests: int = 0
    metrics_cpu_ms: float = 0.0
    metrics_bytes: int = 0
    readyz_cpu_ms: float = 0.0
    pods: int = 0
    loaded: Mem | None = None
    drain_samples: list[Mem] = field(default_factory=list)
    drain_s: float | None = None
    drain_cpu: float = 0.0
    drain_line: dict[str, Any] | None = None
    after_samples: list[Mem] = field(default_factory=list)
    final: Mem | None = None


async def scheduled_event_gets(imds: ImdsControl, vm: str) -> int:
    return sum(
        1
        for r in await imds.requests(vm)
        if r["method"] == "GET" and r["path"].lower().startswith("/metadata/scheduledevents")
    )


async def sample_for(pid: int, seconds: float, every: float) -> list[Mem]:
    loop = asyncio.get_running_loop()
    start = loop.time()
    samples = [read_mem(pid)]
    for i in range(1, int(seconds / every) + 1):
        # Sleep to a fixed schedule, so the window is `seconds` long whatever a read costs.
        await asyncio.sleep(max(0.0, start + i * every - loop.time()))
        samples.append(read_mem(pid))
    return samples


async def request_cost(
    session: aiohttp.ClientSession, pid: int, url: str, idle_rate: float
) -> tuple[float, int]:
    """Agent CPU ms per GET of ``url`` (idle polling subtracted), and the body size."""
    loop = asyncio.get_running_loop()
    cpu0, t0 = read_cpu(pid), loop.time()
    size = 0
    for _ in range(PROBES):
        async with session.get(url, timeout=CALL_TIMEOUT) as resp:
            size = len(await resp.read())
    cpu = read_cpu(pid) - cpu0 - idle_rate * (loop.time() - t0)
    return max(0.0, cpu) * 1000 / PROBES, size


async def node_pods(session: aiohttp.ClientSession, cluster_url: str) -> list[dict[str, Any]]:
    async with session.get(
        f"{cluster_url}/api/v1/pods",
        params={"fieldSelector": f"spec.nodeName={NODE}"},
        timeout=CALL_TIMEOUT,
    ) as resp:
        listing = await resp.json()
    items: list[dict[str, Any]] = listing.get("items") or []
    return items


def evictable(pods: list[dict[str, Any]]) -> int:
    """Pods that a drain must move: all but DaemonSet pods."""
    count = 0
    for pod in pods:
        owners = (pod.get("metadata") or {}).get("ownerReferences") or []
        if not any(o.get("kind") == "DaemonSet" and o.get("controller") for o in owners):
            count += 1
    return count


async def measure_agent(seconds: float, pods: int, notice: float, log_dir: Path) -> AgentResults:
    results = AgentResults()
    async with contextlib.AsyncExitStack() as stack:
        session = await stack.enter_async_context(aiohttp.ClientSession(timeout=CALL_TIMEOUT))
        imds = ImdsProcess(log_level="warning", env=child_env(), stderr=log_dir / "imds.log")
        stack.push_async_callback(imds.stop)
        await imds.start(timeout=CHILD_START_TIMEOUT)
        cluster = ClusterProcess(
            kubeconfig=log_dir / "kubeconfig",
            scenario="spot-node",
            stderr=log_dir / "emulator.log",
            env=child_env(),
        )
        stack.push_async_callback(cluster.stop)
        await cluster.start(timeout=CHILD_START_TIMEOUT)
        # The scenario's own pods carry no stop-after annotation and would take their whole
        # grace period (up to 120 s) to stop; 1 s, like the loaded-node pods, keeps the drain
        # short and the same for every pod.
        await cluster.control.update_settings(stop_after=1.0)

        port = free_port()
        agent_url = f"http://127.0.0.1:{port}"
        agent_log = AgentLog()
        started = time.monotonic()
        # What a DaemonSet pod gets, and no more: every other setting is the default.
        env = {
            "SPOTGUARD_NODE_NAME": NODE,
            "SPOTGUARD_IMDS_URL": imds.url,
            "SPOTGUARD_HTTP_ADDRESS": f"127.0.0.1:{port}",
            "KUBECONFIG": str(cluster.kubeconfig),
        }
        agent = await spawn(
            "run",
            env=child_env(env),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        assert agent.stderr is not None
        reader = asyncio.create_task(agent_log.follow(agent.stderr))
        stack.push_async_callback(_finish, reader)
        # Registered last, so it runs first: the agent stops before its log reader is awaited
        # and before the simulators, so it never sees its API server vanish under it.
        stack.push_async_callback(stop_process, agent)
        try:
            await wait_ready(agent, agent_url, AGENT_READY_TIMEOUT)
            results.ready_s = time.monotonic() - started
            await asyncio.sleep(SETTLE)
            await idle(results, cluster, agent.pid, imds, agent_log, seconds)
            idle_rate = results.idle_cpu / results.idle_wall
            results.metrics_cpu_ms, results.metrics_bytes = await request_cost(
                session, agent.pid, agent_url + "/metrics", idle_rate
            )
            results.readyz_cpu_ms, _ = await request_cost(
                session, agent.pid, agent_url + "/readyz", idle_rate
            )
            await drain(results, session, cluster, agent, imds.control, agent_log, pods, notice)
        except Exception:
            print("the agent's last log lines:", file=sys.stderr)
            for line in agent_log.tail:
                print(f"  | {line[:300]}", file=sys.stderr)
            raise
    return results


async def _finish(task: asyncio.Task[None]) -> None:
    # The agent has been stopped by now, so its stderr ends and the reader returns.
    with contextlib.suppress(TimeoutError):  # wait_for has cancelled it then
        await asyncio.wait_for(task, 5.0)


async def idle(
    results: AgentResults,
    cluster: ClusterProcess,
    pid: int,
    imds: ImdsProcess,
    agent_log: AgentLog,
    seconds: float,
) -> None:
    vm = imds.vms[0]
    polls0 = await scheduled_event_gets(imds.control, vm)
    lines0 = agent_log.lines
    mark = await cluster.control.mark()
    cpu0, t0 = read_cpu(pid), time.monotonic()
    results.idle_samples = await sample_for(pid, seconds, 1.0)
    results.idle_cpu = read_cpu(pid) - cpu0
    results.idle_wall = time.monotonic() - t0
    results.idle_polls = await scheduled_event_gets(imds.control, vm) - polls0
    results.idle_log_lines = agent_log.lines - lines0
    results.idle_api_requests = len(await cluster.control.requests(since=mark))


async def drain(
    results: AgentResults,
    session: aiohttp.ClientSession,
    cluster: ClusterProcess,
    agent: asyncio.subprocess.Process,
    imds: ImdsControl,
    agent_log: AgentLog,
    pods: int,
    notice: float,
) -> None:
    # The scenario already has a few pods on the node; the loaded-node mix fills it up to
    # `pods` (its names carry namespace work-0, so they do not clash). The node itself exists.
    present = len(await node_pods(session, cluster.url))
    objects = [o for o in loaded_node(0, pods - present) if o.get("kind") != "Node"]
    await cluster.control.seed(*objects)
    results.pods = len(await node_pods(session, cluster.url))
    await asyncio.sleep(2.0)  # the emulator's kubelet makes the new pods Running and Ready
    results.loaded = read_mem(agent.pid)

    loop = asyncio.get_running_loop()
    cpu0, t0 = read_cpu(agent.pid), loop.time()
    await imds.inject("Preempt", not_before_in=notice)
    until = t0 + notice + DRAIN_GRACE
    next_check = t0
    while loop.time() < until and agent.returncode is None:
        results.drain_samples.append(read_mem(agent.pid))
        if agent_log.drained.is_set():
            break
        if loop.time() >= next_check:
            # The log line is the signal; the pod count is the fallback if the line changed.
            next_check = loop.time() + 0.5
            if evictable(await node_pods(session, cluster.url)) == 0:
                break
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(agent_log.drained.wait(), DRAIN_SAMPLE)
    else:
        raise RuntimeError("the node was not drained (or the agent exited)")
    results.drain_s = loop.time() - t0
    results.drain_cpu = read_cpu(agent.pid) - cpu0
    results.drain_line = agent_log.drain
    results.after_samples = await sample_for(agent.pid, AFTER_DRAIN, 1.0)
    results.final = read_mem(agent.pid)


# --- imports in fresh interpreters -----------------------------------------------------------

STDLIB = [
    "asyncio", "argparse", "contextlib", "dataclasses", "datetime", "enum", "hashlib", "json",
    "logging", "pathlib", "random", "re", "signal", "socket", "ssl", "typing",
]  # fmt: skip
WEB = ["aiohttp", "structlog", "prometheus_client"]
CONFIG = ["pydantic", "pydantic_settings", "yaml"]
KUBE = ["kubernetes_asyncio.client", "kubernetes_asyncio.config"]
AZURE = ["azure.servicebus.aio"]
AGENT = ["spotguard.cli", "spotguard.app"]

#: Stands in for kubernetes-asyncio with the few names spotguard.kube.client uses, so that the
#: "without kubernetes-asyncio" row measures everything else the agent imports.
KUBE_STUB = """
import sys, types
def _stub(name, **attrs):
    module = types.ModuleType(name)
    module.__dict__.update(attrs)
    module.__path__ = []
    sys.modules[name] = module
    return module
_root = _stub("kubernetes_asyncio")
_root.client = _stub("kubernetes_asyncio.client", ApiClient=object, Configuration=object)
_root.config = _stub("kubernetes_asyncio.config", load_kube_config=None,
                     load_incluster_config=None)
_root.config.config_exception = _stub("kubernetes_asyncio.config.config_exception",
                                      ConfigException=Exception)
"""

#: Reads the interpreter's own RSS without importing anything that the row does not.
REPORT = """
import sys
_values = {}
with open("/proc/self/status") as _status:
    for _line in _status:
        _key, _, _rest = _line.partition(":")
        if _key in ("VmRSS", "RssAnon", "RssFile"):
            _values[_key] = int(_rest.split()[0])
print(_values["VmRSS"], _values["RssAnon"], _values["RssFile"], len(sys.modules),
      int(any(m == "azure" or m.startswith("azure.") for m in sys.modules)))
"""


@dataclass(frozen=True, slots=True)
class ImportRss:
    label: str
    rss: float  # KiB, medians
    anon: float
    file: float
    modules: int
    azure: bool


def python(*args: str) -> subprocess.CompletedProcess[str]:
    """Run this interpreter in the repository, output captured; raises if it fails."""
    # The argv is this interpreter and code written in this file: nothing untrusted.
    return subprocess.run(  # noqa: S603
        [PYTHON, *args],
        capture_output=True,
        text=True,
        timeout=IMPORT_TIMEOUT,
        check=True,
        cwd=REPO,
        env=child_env({}),
    )


def import_rss(label: str, modules: Sequence[str], prelude: str = "") -> ImportRss:
    code = prelude + "".join(f"import {m}\n" for m in modules) + REPORT
    runs = []
    for _ in range(IMPORT_REPEATS):
        runs.append([int(x) for x in python("-c", code).stdout.split()])
    return ImportRss(
        label=label,
        rss=statistics.median(r[0] for r in runs),
        anon=statistics.median(r[1] for r in runs),
        file=statistics.median(r[2] for r in runs),
        modules=runs[0][3],
        azure=bool(runs[0][4]),
    )


@dataclass
class ImportResults:
    layers: list[ImportRss]
    alone: list[ImportRss]
    stubbed: ImportRss
    azure_imported: bool
    with_azure: ImportRss | None  # the agent's imports + azure, when the agent does not import it


def measure_imports() -> ImportResults:
    agent = import_rss("spotguard.app", AGENT)
    layers = [
        import_rss("bare interpreter (venv site only)", []),
        import_rss("+ stdlib the agent uses (asyncio, ssl, json, logging, ...)", STDLIB),
        import_rss("+ aiohttp, structlog, prometheus_client", STDLIB + WEB),
        import_rss("+ pydantic, pydantic_settings, PyYAML", STDLIB + WEB + CONFIG),
        import_rss("+ kubernetes_asyncio (client, config)", STDLIB + WEB + CONFIG + KUBE),
    ]
    chain = STDLIB + WEB + CONFIG + KUBE
    if agent.azure:
        layers.append(import_rss("+ azure.servicebus.aio", chain + AZURE))
        chain = chain + AZURE
    layers.append(
        import_rss("+ spotguard.cli, spotguard.app (= the agent's imports)", chain + AGENT)
    )
    alone = [
        import_rss(f"stdlib + {name}", STDLIB + mods)
        for name, mods in (
            ("aiohttp", ["aiohttp"]),
            ("structlog", ["structlog"]),
            ("prometheus_client", ["prometheus_client"]),
            ("pydantic + pydantic_settings", ["pydantic", "pydantic_settings"]),
            ("PyYAML", ["yaml"]),
            ("kubernetes_asyncio (client, config)", KUBE),
            ("azure.servicebus.aio", AZURE),
        )
    ]
    stubbed = import_rss("spotguard.app, kubernetes_asyncio stubbed out", AGENT, KUBE_STUB)
    # The Service Bus sink is a declared dependency that nothing imports yet: what it would add.
    with_azure = (
        None
        if agent.azure
        else import_rss("spotguard.app + azure.servicebus.aio (not imported today)", AGENT + AZURE)
    )
    return ImportResults(
        layers=layers,
        alone=alone,
        stubbed=stubbed,
        azure_imported=agent.azure,
        with_azure=with_azure,
    )


# --- import time -----------------------------------------------------------------------------

IMPORTTIME = re.compile(r"^import time:\s+(\d+) \|\s+(\d+) \| ( *)(\S+)\s*$")


@dataclass
class ImportTime:
    wall_ms: float  # process start to exit, `python -c "import spotguard.app"`
    bare_ms: float  # the same for `python -c pass`
    total_ms: float  # cumulative of the top-level `spotguard.app` entry
    packages: list[tuple[str, float, float, int]]  # name, inclusive ms, exclusive ms, modules
    modules: list[tuple[str, float, float]]  # name, cumulative ms, self ms
    from_source: list[str]  # modules imported from .py: no usable .pyc (stale, not written)
    cold: ColdStart | None = None


@dataclass(frozen=True, slots=True)
class ColdStart:
    """Importing the agent with no bytecode cache at all: every module compiled."""

    wall_s: float
    cpu_s: float
    max_rss_kib: int


COLD_START = """
import resource, time
_start = time.perf_counter()
import spotguard.cli, spotguard.app
_usage = resource.getrusage(resource.RUSAGE_SELF)
print(time.perf_counter() - _start, _usage.ru_utime + _usage.ru_stime, _usage.ru_maxrss)
"""


def measure_cold_start() -> ColdStart:
    with tempfile.TemporaryDirectory(prefix="spotguard-pycache-") as empty:
        # An empty cache prefix hides every __pycache__ directory, and nothing is written to
        # it: the interpreter compiles all ~1,400 modules, as in an image built without .pyc.
        env = child_env({"PYTHONPYCACHEPREFIX": empty, "PYTHONDONTWRITEBYTECODE": "1"})
        done = subprocess.run(  # noqa: S603 (this interpreter, code from this file)
            [PYTHON, "-c", COLD_START],
            capture_output=True,
            text=True,
            timeout=600,
            check=True,
            cwd=REPO,
            env=env,
        )
    wall, cpu, rss = done.stdout.split()
    return ColdStart(wall_s=float(wall), cpu_s=float(cpu), max_rss_kib=int(rss))


@dataclass
class ImportTimeRun:
    """One ``-X importtime`` run, in µs."""

    inclusive: dict[str, float]  # package root -> its outermost entries' cumulative time
    exclusive: dict[str, float]  # package root -> the sum of its modules' own time
    count: dict[str, int]  # package root -> modules imported
    modules: dict[str, tuple[float, float]]  # module -> (cumulative, self)


def parse_importtime(text: str) -> ImportTimeRun:
    run = ImportTimeRun(
        inclusive=collections.defaultdict(float),
        exclusive=collections.defaultdict(float),
        count=collections.defaultdict(int),
        modules={},
    )
    entries = []
    for line in text.splitlines():
        match = IMPORTTIME.match(line)
        if match:
            own, cum, indent, name = match.groups()
            entries.append((len(indent) // 2, name, float(own), float(cum)))
    # -X importtime prints a module after its children and shows nesting as indentation, so a
    # line's parent is the first line after it that is one level shallower.
    parents: list[str | None] = [None] * len(entries)
    waiting: dict[int, list[int]] = collections.defaultdict(list)
    for i, (depth, name, _, _) in enumerate(entries):
        for child in waiting.pop(depth + 1, []):
            parents[child] = name
        waiting[depth].append(i)
    for i, (_, name, own, cum) in enumerate(entries):
        root = name.split(".")[0]
        parent = parents[i]
        run.exclusive[root] += own
        run.count[root] += 1
        # Inclusive: a package's outermost entries (their parent belongs to another package)
        # with all they pulled in; so urllib3, imported by kubernetes_asyncio, counts for both.
        if parent is None or parent.split(".")[0] != root:
            run.inclusive[root] += cum
        run.modules[name] = (cum, own)
    return run


def measure_import_time(top: int = 12) -> ImportTime:
    def wall(code: str) -> float:
        start = time.perf_counter()
        python("-c", code)
        return (time.perf_counter() - start) * 1000

    wall("import spotguard.app")  # warm the page cache (and write any missing .pyc files)
    walls = [wall("import spotguard.app") for _ in range(IMPORT_REPEATS)]
    bares = [wall("pass") for _ in range(IMPORT_REPEATS)]
    runs = []
    for _ in range(IMPORT_REPEATS):
        done = python("-X", "importtime", "-c", "import spotguard.app")
        runs.append(parse_importtime(done.stderr))

    def ms(values: list[float]) -> float:
        return statistics.median(values) / 1000

    roots = {root for r in runs for root in r.count}
    packages = [
        (
            root,
            ms([r.inclusive.get(root, 0.0) for r in runs]),
            ms([r.exclusive.get(root, 0.0) for r in runs]),
            runs[0].count.get(root, 0),
        )
        for root in roots
    ]
    names = {name for r in runs for name in r.modules}
    modules = [
        (
            name,
            ms([r.modules[name][0] for r in runs if name in r.modules]),
            ms([r.modules[name][1] for r in runs if name in r.modules]),
        )
        for name in names
    ]
    verbose = python("-v", "-c", "import spotguard.app").stderr
    from_source = re.findall(r"^# code object from '?(\S+?\.py)'?$", verbose, re.MULTILINE)
    return ImportTime(
        from_source=from_source,
        wall_ms=statistics.median(walls),
        bare_ms=statistics.median(bares),
        total_ms=ms([r.modules.get("spotguard.app", (0.0, 0.0))[0] for r in runs]),
        packages=sorted(packages, key=lambda p: -p[1])[:top],
        modules=sorted(modules, key=lambda m: -m[1])[:top],
    )


# --- tables ----------------------------------------------------------------------------------


def print_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    print()
    print(title)
    print(("  " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))).rstrip())
    print("  " + "-|-".join("-" * w for w in widths))
    for r in rows:
        cells = [
            c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))
        ]
        print(("  " + " | ".join(cells)).rstrip())


def report_agent(r: AgentResults, seconds: float) -> None:
    rss = [s.rss for s in r.idle_samples]
    tick_ms = 1000 / CLOCK_TICKS
    per_poll_ms = r.idle_cpu * 1000 / r.idle_polls if r.idle_polls else float("nan")
    last = r.idle_samples[-1]
    rows = [
        ["start to /readyz 200", f"{r.ready_s:.2f} s"],
        ["idle window", f"{r.idle_wall:.1f} s, {len(rss)} samples"],
        ["RSS median / max", f"{mib(statistics.median(rss))} / {mib(max(rss))} MiB"],
        ["RSS first / last sample", f"{mib(rss[0])} / {mib(rss[-1])} MiB"],
        ["  anonymous (heap) / file-backed", f"{mib(last.anon)} / {mib(last.file)} MiB"],
        ["VmHWM (peak so far)", f"{mib(last.hwm)} MiB"],
        ["threads", str(last.threads)],
        [
            "Scheduled Events GETs (simulator log)",
            f"{r.idle_polls} ({r.idle_polls / r.idle_wall:.2f}/s)",
        ],
        ["CPU time (utime + stime)", f"{r.idle_cpu:.2f} s"],
        # CPU time is counted in whole clock ticks: the window's total is +-1 tick.
        ["CPU per poll", f"{per_poll_ms:.2f} ms (+-{tick_ms / max(r.idle_polls, 1):.2f} ms)"],
        ["CPU, % of one core", f"{100 * r.idle_cpu / r.idle_wall:.2f} %"],
        ["log lines while idle", str(r.idle_log_lines)],
        ["API server requests while idle", str(r.idle_api_requests)],
        ["CPU per /metrics scrape", f"{r.metrics_cpu_ms:.2f} ms ({r.metrics_bytes} bytes)"],
        ["CPU per /readyz probe", f"{r.readyz_cpu_ms:.2f} ms"],
    ]
    print_table(
        f"idle `spotguard run` (poll interval 1 s, defaults), {seconds:g} s window, "
        f"CPU clock tick {tick_ms:g} ms",
        ["measure", "value"],
        rows,
    )
    during = [s.rss for s in r.drain_samples]
    after = [s.rss for s in r.after_samples]
    line = r.drain_line or {}
    final = r.final or last
    loaded = r.loaded or last
    rows = [
        ["pods on the node", str(r.pods)],
        ["RSS with the node loaded, before the notice", f"{mib(loaded.rss)} MiB"],
        ["notice to drained", "-" if r.drain_s is None else f"{r.drain_s:.1f} s"],
        [
            "agent's drain result / margin",
            f"{line.get('result', '-')} / {line.get('margin_s', '-')} s",
        ],
        ["agent's API requests for the drain", str(line.get("api_requests", "-"))],
        ["CPU time, notice to drained", f"{r.drain_cpu:.2f} s"],
        ["RSS during the drain, max sampled", f"{mib(max(during))} MiB" if during else "-"],
        [
            "RSS after the drain, median / max",
            f"{mib(statistics.median(after))} / {mib(max(after))} MiB",
        ],
        ["  anonymous / file-backed", f"{mib(final.anon)} / {mib(final.file)} MiB"],
        ["VmHWM (peak of the whole run)", f"{mib(final.hwm)} MiB"],
        [
            "growth over idle median",
            f"{mib(statistics.median(after) - statistics.median(rss))} MiB",
        ],
    ]
    print_table("the same agent draining its node (Preempt)", ["measure", "value"], rows)


def report_imports(r: ImportResults, agent: AgentResults) -> None:
    rows = []
    previous: float | None = None
    for row in r.layers:
        delta = "" if previous is None else f"+{mib(row.rss - previous)}"
        rows.append(
            [row.label, mib(row.rss), delta, mib(row.anon), mib(row.file), str(row.modules)]
        )
        previous = row.rss
    print_table(
        f"RSS after imports, fresh interpreter each, median of {IMPORT_REPEATS} (MiB)",
        ["imported", "RSS", "delta", "anon", "file", "modules"],
        rows,
    )
    base = r.layers[1].rss
    rows = [
        [row.label, mib(row.rss), f"+{mib(row.rss - base)}", str(row.modules)] for row in r.alone
    ]
    print_table(
        "each library alone, on top of the stdlib row (MiB; the deltas overlap, shared deps)",
        ["imported", "RSS", "over stdlib", "modules"],
        rows,
    )
    full = r.layers[-1].rss
    idle = statistics.median(s.rss for s in agent.idle_samples)
    saved = full - r.stubbed.rss
    rows = [
        ["spotguard.app (what `spotguard run` imports)", mib(full), str(r.layers[-1].modules)],
        [r.stubbed.label, mib(r.stubbed.rss), str(r.stubbed.modules)],
        ["  difference: kubernetes_asyncio and its deps", mib(saved), ""],
        ["idle agent, measured (median)", mib(idle), ""],
        ["idle agent without kubernetes_asyncio, estimated", mib(idle - saved), ""],
    ]
    if r.with_azure is not None:
        rows.append(
            [r.with_azure.label, mib(r.with_azure.rss), str(r.with_azure.modules)],
        )
        rows.append(
            ["  difference: azure.servicebus and its deps", mib(r.with_azure.rss - full), ""]
        )
    print_table("what a smaller agent would weigh (MiB)", ["", "RSS", "modules"], rows)
    print(f"  azure imported by spotguard.app: {'yes' if r.azure_imported else 'no'}")


def report_import_time(t: ImportTime) -> None:
    print_table(
        f"import time of spotguard.app, median of {IMPORT_REPEATS}",
        ["measure", "ms"],
        [
            ["`python -c 'import spotguard.app'`, process wall time", f"{t.wall_ms:.0f}"],
            ["`python -c pass`, process wall time", f"{t.bare_ms:.0f}"],
            ["-X importtime: spotguard.app cumulative", f"{t.total_ms:.0f}"],
        ],
    )
    if t.from_source:
        shown = ", ".join(
            str(Path(f).relative_to(REPO)) if f.startswith(str(REPO)) else f
            for f in t.from_source[:5]
        )
        print(
            f"  compiled from source at every start (no usable .pyc): {len(t.from_source)}: {shown}"
        )
    if t.cold is not None:
        print(
            f"  cold start, no bytecode at all: {t.cold.wall_s:.1f} s wall, "
            f"{t.cold.cpu_s:.1f} s CPU, peak RSS {mib(t.cold.max_rss_kib)} MiB"
        )
    print_table(
        "by top-level package (inclusive: with what it pulls in; exclusive: its own modules)",
        ["package", "inclusive ms", "exclusive ms", "modules"],
        [[n, f"{inc:.1f}", f"{exc:.1f}", str(c)] for n, inc, exc, c in t.packages],
    )
    print_table(
        "slowest modules by cumulative time",
        ["module", "cumulative ms", "self ms"],
        [[n, f"{cum:.1f}", f"{own:.1f}"] for n, cum, own in t.modules],
    )


# --- main ------------------------------------------------------------------------------------


async def run_agent_part(seconds: float, pods: int, notice: float) -> AgentResults:
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    # SIGTERM cancels like Ctrl-C does, so the exit stack stops every child.
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        with tempfile.TemporaryDirectory(prefix="spotguard-footprint-") as tmp:
            return await measure_agent(seconds, pods, notice, Path(tmp))
    finally:
        loop.remove_signal_handler(signal.SIGTERM)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="idle window (default 60)")
    parser.add_argument("--pods", type=int, default=110, help="pods on the node to drain")
    parser.add_argument("--notice", type=float, default=20.0, help="Preempt notice, seconds")
    parser.add_argument(
        "--cold-start",
        action="store_true",
        help="also import the agent with no .pyc at all (adds ~40 s on 2 CPUs)",
    )
    args = parser.parse_args()
    if args.seconds < 5 or args.pods < 20 or args.notice < 5:
        parser.error("--seconds >= 5, --pods >= 20 and --notice >= 5, please")

    print(f"1/3 the agent: idle {args.seconds:g} s, then a {args.pods}-pod drain", file=sys.stderr)
    try:
        agent = asyncio.run(run_agent_part(args.seconds, args.pods, args.notice))
    except (KeyboardInterrupt, asyncio.CancelledError):
        # Ctrl-C or SIGTERM: the children have been stopped on the way out.
        print("interrupted", file=sys.stderr)
        return 130
    print("2/3 RSS after imports (fresh interpreters)", file=sys.stderr)
    imports = measure_imports()
    print("3/3 import time", file=sys.stderr)
    import_time = measure_import_time()
    if args.cold_start:
        import_time.cold = measure_cold_start()

    print(
        f"machine: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}, "
        f"page {PAGE_KIB} KiB, {time.strftime('%Y-%m-%d %H:%M %Z')}"
    )
    report_agent(agent, args.seconds)
    report_imports(imports, agent)
    report_import_time(import_time)
    return 0


if __name__ == "__main__":
    sys.exit(main())
