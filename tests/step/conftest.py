"""Fixtures and helpers for spotguard.step's tests: Azurite, checkpoint locations, the example
step as a real child process, and HTTP requests to its checkpoint endpoint (127.0.0.1 only)."""

from __future__ import annotations

import http.client
import json
import os
import queue
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "concat_csv_step.py"
AZURITE = ROOT / ".cache" / "npm" / "node_modules" / ".bin" / "azurite-blob"
TOKEN = "s3cret-token-for-tests"
# Azurite's documented development account (public, well known; not a secret).
DEV_ACCOUNT_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout: float, proc: subprocess.Popen[Any] | None = None) -> None:
    until = time.monotonic() + timeout
    while time.monotonic() < until:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process exited with {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.02)
    raise AssertionError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


# --- Azurite -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Azurite:
    port: int

    @property
    def connection_string(self) -> str:
        return (
            "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
            f"AccountKey={DEV_ACCOUNT_KEY};"
            f"BlobEndpoint=http://127.0.0.1:{self.port}/devstoreaccount1;"
        )

    def new_container(self) -> str:
        from azure.storage.blob import ContainerClient

        name = f"t{uuid.uuid4().hex[:20]}"
        with ContainerClient.from_connection_string(
            self.connection_string, name, connection_timeout=5, read_timeout=10
        ) as container:
            container.create_container(timeout=10)
        return name


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azurite]:
    """Azurite's blob service on 127.0.0.1, in memory, for the whole session."""
    if not AZURITE.exists():
        pytest.fail(f"Azurite is not installed ({AZURITE}): run `make setup`")
    workdir = tmp_path_factory.mktemp("azurite")
    port = free_port()
    with (workdir / "azurite.log").open("wb") as log:
        proc = subprocess.Popen(
            [
                str(AZURITE),
                "--blobHost",
                "127.0.0.1",
                "--blobPort",
                str(port),
                "--inMemoryPersistence",
                "--skipApiVersionCheck",
                "--loose",
                "--disableTelemetry",
                "--silent",
            ],
            cwd=workdir,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        try:
            wait_for_port(port, 30, proc)
        except AssertionError as exc:
            pytest.fail(f"Azurite did not start: {exc}\n{(workdir / 'azurite.log').read_text()}")
        yield Azurite(port)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --- checkpoint locations ------------------------------------------------------------------------


@dataclass(frozen=True)
class Location:
    """A fresh checkpoint location and the environment a step needs to use it."""

    url: str
    env: Mapping[str, str]

    def store(self, **kwargs: Any) -> Any:
        from spotguard.step import CheckpointStore, open_store

        options = {}
        if "AZURE_STORAGE_CONNECTION_STRING" in self.env:
            options["connection_string"] = self.env["AZURE_STORAGE_CONNECTION_STRING"]
        return CheckpointStore(open_store(self.url, **options), **kwargs)


LocationFactory = Callable[[], Location]


@pytest.fixture(params=["local", "azurite"])
def new_location(request: pytest.FixtureRequest, tmp_path: Path) -> LocationFactory:
    """Makes fresh checkpoint locations on the local disk or in Azurite (one param each)."""
    counter = iter(range(1_000_000))
    if request.param == "local":
        return lambda: Location(str(tmp_path / f"ckpt-{next(counter)}"), {})
    azurite: Azurite = request.getfixturevalue("azurite")
    container = azurite.new_container()
    env = {"AZURE_STORAGE_CONNECTION_STRING": azurite.connection_string}
    return lambda: Location(f"abfs://{container}/run-1/step-{next(counter)}", env)


# --- data ----------------------------------------------------------------------------------------


def make_csvs(folder: Path, count: int, *, seed: int, rows: int = 150) -> list[Path]:
    """``count`` CSV files with one header and awkward values (commas, quotes, non-ASCII)."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    words = ["plain", "with,comma", 'with "quotes"', "ünïcödé", "", "x" * 40]
    files = []
    for i in range(count):
        lines = ["id,name,value,note"]
        for r in range(rows):
            note = rng.choice(words)
            if "," in note or '"' in note:
                note = '"' + note.replace('"', '""') + '"'
            lines.append(f"{i}-{r},n{rng.randrange(10**6)},{rng.random():.6f},{note}")
        path = folder / f"part-{i:03d}.csv"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        files.append(path)
    return files


# --- the step as a child process -----------------------------------------------------------------


def step_env(location: Location, **extra: str) -> dict[str, str]:
    """The test environment without anyone's SPOTGUARD_/KFP_/AZURE_ settings, plus ours."""
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SPOTGUARD_", "KFP_", "AZURE_", "PIP_"))
    }
    return {
        **base,
        "SPOTGUARD_CHECKPOINT_URL": location.url,
        "SPOTGUARD_CHECKPOINT_TOKEN_FILE": "/nonexistent/spotguard-token",
        "SPOTGUARD_CHECKPOINT_HOST": "127.0.0.1",
        "SPOTGUARD_RUN_ID": "run-1",
        "SPOTGUARD_STEP": "concat",
        "KFP_RETRY_INDEX": "0",
        **location.env,
        **extra,
    }


class Step:
    """The example step running as a child process; its JSON lines arrive on ``events``."""

    def __init__(
        self,
        env: Mapping[str, str],
        inputs: Path,
        output: Path,
        *,
        pace: float = 0.0,
        python: str = sys.executable,
    ) -> None:
        self.port = int(env.get("SPOTGUARD_CHECKPOINT_PORT", "0"))
        self.proc = subprocess.Popen(
            [python, str(EXAMPLE), "--input", str(inputs), "--output", str(output)]
            + (["--pace", str(pace)] if pace else []),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=dict(env),
            text=True,
        )
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.seen: list[dict[str, Any]] = []
        self.stderr = ""
        self._readers = [
            threading.Thread(target=self._read_stdout, daemon=True),
            threading.Thread(target=self._read_stderr, daemon=True),
        ]
        for t in self._readers:
            t.start()

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        with self.proc.stdout:
            for line in self.proc.stdout:
                self.events.put(json.loads(line))

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        with self.proc.stderr:
            self.stderr = self.proc.stderr.read()

    def wait_event(self, predicate: Callable[[dict[str, Any]], bool], timeout: float) -> None:
        until = time.monotonic() + timeout
        while True:
            left = until - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no matching event in {timeout} s; saw {self.seen}")
            try:
                event = self.events.get(timeout=min(left, 0.2))
            except queue.Empty:
                if self.proc.poll() is not None and self.events.empty():
                    raise AssertionError(
                        f"step exited with {self.proc.returncode}; saw {self.seen}\n{self.stderr}"
                    ) from None
                continue
            self.seen.append(event)
            if predicate(event):
                return

    def wait_listening(self, timeout: float = 10) -> None:
        wait_for_port(self.port, timeout, self.proc)

    def finish(self, timeout: float = 30) -> int:
        """Wait for the exit; returns the exit code and collects every remaining event."""
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise
        for t in self._readers:
            t.join(5)
        while not self.events.empty():
            self.seen.append(self.events.get())
        return code

    def running(self) -> bool:
        return self.proc.poll() is None

    def signal(self, signum: int = signal.SIGTERM) -> None:
        self.proc.send_signal(signum)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        for t in self._readers:
            t.join(5)

    def units(self) -> list[int]:
        return [e["index"] for e in self.seen if e["event"] == "unit"]


@pytest.fixture
def steps() -> Iterator[list[Step]]:
    """Register started steps here; any still running at the end is killed."""
    started: list[Step] = []
    yield started
    for step in started:
        step.kill()


# --- requests to the endpoint --------------------------------------------------------------------


def request_body(*, seconds: float = 10.0, event_id: str = "evt-1") -> dict[str, str]:
    deadline = datetime.now(UTC) + timedelta(seconds=seconds)
    return {
        "event_id": event_id,
        "kind": "preempt",
        "node": "aks-spot-1",
        "deadline": deadline.isoformat().replace("+00:00", "Z"),
    }


def post(
    port: int,
    body: dict[str, Any] | bytes | None = None,
    *,
    token: str | None = TOKEN,
    method: str = "POST",
    path: str = "/checkpoint",
    headers: Mapping[str, str] | None = None,
    timeout: float = 15.0,
) -> tuple[int, dict[str, Any]]:
    """One HTTP request to 127.0.0.1:port; the status and the decoded JSON answer."""
    raw = json.dumps(body).encode() if isinstance(body, dict) else body
    sent = {"Content-Type": "application/json"}
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    sent.update(headers or {})
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=raw, headers=sent)
        response = conn.getresponse()
        payload = response.read()
    finally:
        conn.close()
    return response.status, (json.loads(payload) if payload else {})
