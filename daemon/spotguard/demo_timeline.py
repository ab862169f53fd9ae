"""The demo's live timeline: what the watches, the request log and the agent's log report,
as ``t+  1.2s  text`` lines in time order, and recorded in ``Observed`` for the summary."""

from __future__ import annotations

import asyncio
import functools
import math
import textwrap
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, TextIO

from spotguard.demo_agent_log import WARNING_LEVELS, brief, parse
from spotguard.demo_node import is_daemonset_pod
from spotguard.demo_observed import Observed, PodSeen
from spotguard.kube.client import JSON

#: Lines from the watches, the request log and the agent's log arrive with different delays;
#: each is held this long and the held lines are printed in time order.
HOLD = 0.4
#: Timeline lines wrap here (the time stamp comes first).
WIDTH = 86


class Timeline:
    """Prints ``t+  1.2s  text`` lines in time order, each once ``now() - t >= HOLD``.

    The sources lag by less than ``HOLD``, so lines print in order. An entry renders when
    printed, to any number of lines (so it can say what the slower sources learned by then)."""

    def __init__(self, out: TextIO, now: Callable[[], float]) -> None:
        self._out = out
        self._now = now
        self._held: list[tuple[float, Callable[[], list[str]]]] = []

    def add(self, t: float, text: Callable[[], list[str]] | str) -> None:
        render = text if callable(text) else (lambda: [text])
        self._held.append((t, render))

    def flush(self, *, everything: bool = False) -> None:
        until = math.inf if everything else self._now() - HOLD
        ready = sorted((h for h in self._held if h[0] <= until), key=lambda h: h[0])
        if not ready:
            return
        self._held = [h for h in self._held if h[0] > until]
        for t, render in ready:
            for line in render():
                wrapped = textwrap.wrap(line, width=WIDTH, subsequent_indent="    ")
                for i, part in enumerate(wrapped):
                    stamp = f"t+{t:5.1f}s" if i == 0 else " " * 9
                    self._out.write(f"  {stamp}  {part}\n")
        self._out.flush()


def _names(pods: list[PodSeen]) -> str:
    return ", ".join(p.key.split("/", 1)[1] for p in pods)


class Recorder:
    """Turns what the followers report into timeline entries and the ``Observed`` record.

    Times are seconds since ``t0``: from the event loop's clock for what the watches see as it
    happens, from the wall clock for the time stamps of the request log and the agent's log."""

    def __init__(self, *, out: TextIO, t0_wall: datetime, t0_loop: float) -> None:
        self.t0_wall = t0_wall
        self.t0_loop = t0_loop
        self.loop = asyncio.get_running_loop()
        self.seen = Observed()
        self.timeline = Timeline(out, self.t_loop)
        self.changed = asyncio.Event()
        self._asked: dict[int, list[PodSeen]] = {}
        self._gone: dict[int, list[PodSeen]] = {}

    def t_loop(self) -> float:
        return self.loop.time() - self.t0_loop

    def t_wall(self, stamp: str) -> float:
        moment = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
        return (moment - self.t0_wall).total_seconds()

    # --- the pods and the node, from watches ---------------------------------------------------

    def adopt(self, pods: list[JSON]) -> None:
        """The pods on the node at t = 0."""
        for pod in pods:
            meta = pod.get("metadata") or {}
            key = f"{meta.get('namespace')}/{meta.get('name')}"
            self.seen.pods[str(meta.get("uid"))] = PodSeen(key, is_daemonset_pod(pod))

    def on_pod_event(self, kind: str, pod: JSON) -> None:
        if kind != "RELISTED":
            self._on_pod(kind, pod)
            return
        present = set(pod["present"])
        for uid, seen in self.seen.pods.items():
            if uid not in present and seen.gone_t is None:
                self._on_pod("DELETED", {"metadata": {"uid": uid}})

    def _on_pod(self, kind: str, pod: JSON) -> None:
        meta = pod.get("metadata") or {}
        uid = str(meta.get("uid"))
        seen = self.seen.pods.get(uid)
        t = self.t_loop()
        if seen is None and kind != "DELETED" and not meta.get("deletionTimestamp"):
            # Only while the node is not cordoned: the node is not empty until it goes too.
            key = f"{meta.get('namespace')}/{meta.get('name')}"
            seen = PodSeen(key=key, daemonset=is_daemonset_pod(pod), arrived=True)
            self.seen.pods[uid] = seen
            self.timeline.add(t, f"scheduled onto the node being drained: {key}")
        if seen is None or seen.gone_t is not None:
            return
        if seen.asked_t is None and (meta.get("deletionTimestamp") or kind == "DELETED"):
            # A pod with a grace of 0 goes at once: its deletion is its only event.
            seen.asked_t = t
            grace = meta.get("deletionGracePeriodSeconds")
            seen.grace = grace if isinstance(grace, int) else 0
            self._batch(self._asked, t, seen, self._asked_lines)
        if kind == "DELETED":
            seen.gone_t = t
            self._batch(self._gone, t, seen, self._gone_lines)
        self.changed.set()

    def _batch(
        self,
        batches: dict[int, list[PodSeen]],
        t: float,
        seen: PodSeen,
        render: Callable[[list[PodSeen]], list[str]],
    ) -> None:
        """Pods that change within the same 0.1 s share a timeline entry."""
        key = round(t * 10)
        if key not in batches:
            batches[key] = []
            self.timeline.add(t, functools.partial(render, batches[key]))
        batches[key].append(seen)

    def _asked_lines(self, pods: list[PodSeen]) -> list[str]:
        # Rendered when printed: by then the request log has said how each was asked.
        groups: dict[tuple[str, int | None], list[PodSeen]] = {}
        for pod in pods:
            groups.setdefault((self.seen.how(pod.key), pod.grace), []).append(pod)
        return [
            f"{how} (grace {grace}s): {_names(group)}" for (how, grace), group in groups.items()
        ]

    def _gone_lines(self, pods: list[PodSeen]) -> list[str]:
        moving = [p for p in pods if not p.daemonset]
        lines = []
        if moving:
            last = max(p.gone_t or 0.0 for p in pods)
            left = sum(1 for p in self.seen.moving() if p.gone_t is None or p.gone_t > last)
            lines.append(f"gone: {_names(moving)}" + (f" ({left} to go)" if left else ""))
            if not left:
                lines.append("the node is empty")
        if len(moving) < len(pods):
            lines.append(f"gone (DaemonSet pods): {_names([p for p in pods if p.daemonset])}")
        return lines

    def on_node_event(self, kind: str, node: JSON) -> None:
        if kind == "RELISTED" or self.seen.cordoned_t is not None:
            return
        spec = node.get("spec") or {}
        if not spec.get("unschedulable"):
            return
        self.seen.cordoned_t = t = self.t_loop()
        taints = [
            f"{x.get('key')}={str(x.get('value', ''))[:8]}…"
            for x in spec.get("taints") or ()
            if str(x.get("key", "")).startswith("spotguard.io/")
        ]
        self.timeline.add(t, "node cordoned" + (f", tainted {', '.join(taints)}" if taints else ""))
        self.changed.set()

    # --- the emulator's request log ---------------------------------------------------------

    def on_request(self, entry: Mapping[str, Any]) -> None:
        verb, resource = entry.get("verb"), entry.get("resource")
        sub, status = entry.get("subresource"), entry.get("status")
        key = f"{entry.get('namespace')}/{entry.get('name')}"
        t = self.t_wall(str(entry["at"]))
        if resource == "pods" and verb == "create" and sub == "eviction":
            if status == 201:
                self.seen.evicted.setdefault(key, t)
            elif status == 429:
                self.seen.pdb_refusals[key] += 1
                if self.seen.pdb_refusals[key] == 1:
                    self.timeline.add(t, f"{key}: eviction refused by its PDB, retrying")
        elif resource == "pods" and verb == "delete" and not sub and status == 200:
            self.seen.deleted.setdefault(key, t)

    # --- the agent's log ----------------------------------------------------------------------

    def on_agent_line(self, raw: bytes) -> None:
        text = raw.decode("utf-8", "replace").rstrip()
        if not text:
            return
        self.seen.agent_lines.append(text)
        line = parse(text)
        if line is None:
            return
        stamp = line.get("timestamp")
        t = self.t_wall(stamp) if isinstance(stamp, str) else self.t_loop()
        event, level = str(line.get("event", "")), str(line.get("level", ""))
        if level in WARNING_LEVELS:
            self.seen.agent_warnings += 1
        if event == "notice_new" and line.get("kind") == "preempt":
            self.seen.seen_t = t
            deadline = line.get("deadline")
            at = (
                f", deadline at t+{self.t_wall(deadline):.1f}s" if isinstance(deadline, str) else ""
            )
            self.timeline.add(t, "agent: notice seen" + at)
        elif event == "drain_planned":
            self.timeline.add(
                t,
                f"agent: drain planned: {line.get('to_move')} pods to move, "
                f"{line.get('skipped')} left in place",
            )
        elif event == "pod_delete_after_pdb":
            self.timeline.add(t, f"agent: {line.get('pod')}: PDB still refuses, deleting it")
        elif event == "notice_drained":
            margin = line.get("margin_s")
            self.seen.agent_margin = float(margin) if isinstance(margin, int | float) else None
            shown = "" if margin is None else f", {margin:.1f}s before its deadline"
            self.timeline.add(t, f"agent: drained{shown}")
        elif event == "acknowledge_success":
            self.timeline.add(t, "agent: acknowledged the event (it may start now)")
        elif event == "notice_updated" and line.get("status") == "started":
            self.timeline.add(t, "agent: the event has Started")
        elif level in WARNING_LEVELS:
            self.timeline.add(t, f"agent {brief(line)}")
        self.changed.set()
