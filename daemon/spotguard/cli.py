"""Command line: ``spotguard run | queue | watch | simulate-imds | simulate-cluster |
simulate-servicebus | demo | config-reference``.

Parses arguments and settings, configures logging, and hands over to the composition root
(``app.py``) or a simulator. Invalid settings end here with exit code 2 and one line per key.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from spotguard import __version__
from spotguard.config import Settings, load_settings, unknown_environment_keys
from spotguard.errors import ConfigError
from spotguard.observability.logging import configure_logging, get_logger

EXIT_CONFIG = 2


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="YAML settings file (environment wins)")
    parser.add_argument(
        "--log-format", choices=["json", "console"], help="override SPOTGUARD_LOG_FORMAT"
    )
    parser.add_argument(
        "--log-level", choices=["debug", "info", "warning", "error"], help="log level"
    )


def _settings(args: argparse.Namespace) -> Settings:
    environ = dict(os.environ)
    if args.command == "demo":
        # The demo is read by people: console logs, and only what goes wrong.
        environ.setdefault("SPOTGUARD_LOG_FORMAT", "console")
        environ.setdefault("SPOTGUARD_LOG_LEVEL", "warning")
    # Flags are the most specific source: they win over environment and file.
    if args.log_format:
        environ["SPOTGUARD_LOG_FORMAT"] = args.log_format
    if args.log_level:
        environ["SPOTGUARD_LOG_LEVEL"] = args.log_level
    return load_settings(args.config, environ)


def _start(args: argparse.Namespace) -> Settings:
    settings = _settings(args)
    configure_logging(fmt=settings.log_format.value, level=settings.log_level.value)
    log = get_logger()
    log.info("settings", version=__version__, command=args.command, **settings.effective())
    for key in unknown_environment_keys(os.environ):
        log.warning("unknown_setting_ignored", key=key, hint="not a spotguard setting")
    return settings


def _cmd_run(args: argparse.Namespace) -> int:
    import prometheus_client

    from spotguard.app import run

    settings = _start(args)
    # *_created series double what Prometheus scrapes and nothing here uses them (it is a
    # process-wide switch, so it is thrown here, in the entry point).
    prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]
    return asyncio.run(run(settings))


def _cmd_queue(args: argparse.Namespace) -> int:
    import prometheus_client

    from spotguard.app import queue_mode

    settings = _start(args)
    prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]
    return asyncio.run(queue_mode(settings))


def _cmd_watch(args: argparse.Namespace) -> int:
    from spotguard.app import watch

    settings = _start(args)
    return asyncio.run(watch(settings, out=sys.stdout))


def _cmd_demo(args: argparse.Namespace) -> int:
    from spotguard.demo import run_demo

    settings = _start(args)
    return asyncio.run(run_demo(settings, out=sys.stdout, speedup=args.speedup, notice=args.notice))


def _cmd_config_reference(args: argparse.Namespace) -> int:
    from spotguard.config_reference import write_or_check

    return write_or_check(args.output, check=args.check)


def _sim(module: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        import importlib

        try:
            mod = importlib.import_module(f"spotguard.sim.{module}")
        except ImportError as exc:  # pragma: no cover - depends on the installed extras
            print(
                f"spotguard: the simulators need the 'sim' extra "
                f"(pip install 'spotguard[sim]'): {exc}",
                file=sys.stderr,
            )
            return EXIT_CONFIG
        result: int = mod.main(args)
        return result

    return run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spotguard",
        description="Deadline-aware handling of Azure spot preemption notices on AKS.",
    )
    parser.add_argument("--version", action="version", version=f"spotguard {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser(
        "run",
        help="the agent: respond to this VM's scheduled events (cordon, drain, acknowledge)",
        description="Needs SPOTGUARD_NODE_NAME and Kubernetes access (KUBECONFIG or in-cluster).",
    )
    _add_common(run)
    run.set_defaults(func=_cmd_run)

    queue = sub.add_parser(
        "queue",
        help="queue mode: recover nodes whose VM Azure reports preempted (Event Grid via "
        "Service Bus); leader-elected, one active replica",
        description="Needs SPOTGUARD_EVENTS_QUEUE, Service Bus credentials, "
        "SPOTGUARD_POD_NAME/SPOTGUARD_POD_NAMESPACE and Kubernetes access.",
    )
    _add_common(queue)
    queue.set_defaults(func=_cmd_queue)

    watch = sub.add_parser(
        "watch",
        help="poll IMDS and print one JSON line per change of this VM's scheduled events",
        description="Needs no Kubernetes. Reads SPOTGUARD_IMDS_URL and the other settings.",
    )
    _add_common(watch)
    watch.set_defaults(func=_cmd_watch)

    demo = sub.add_parser(
        "demo",
        help="the real agent drains a loaded, emulated spot node inside a Preempt notice",
        description="Starts the IMDS simulator, the emulated API server and `spotguard run` as "
        "child processes on 127.0.0.1, schedules a Preempt, prints a timeline and a summary; "
        "exits 0 when the node was drained before the deadline, 1 otherwise.",
    )
    _add_common(demo)
    demo.add_argument(
        "--speedup",
        type=float,
        default=1.0,
        help="divide the simulated durations (pods stopping, time Started); not the notice",
    )
    demo.add_argument(
        "--notice", type=float, default=30.0, help="seconds of notice the Preempt gives"
    )
    demo.set_defaults(func=_cmd_demo)

    config_reference = sub.add_parser(
        "config-reference",
        help="write docs/configuration.md from the settings model (spotguard.config)",
        description="Run from the repository root after changing daemon/spotguard/config.py.",
    )
    config_reference.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 if the file is out of date"
    )
    config_reference.add_argument(
        "--output", type=Path, default=Path("docs/configuration.md"), help="the page to write"
    )
    config_reference.set_defaults(func=_cmd_config_reference)

    # --- simulators (the `sim` extra); their modules are imported only when run ----------
    sim_imds = sub.add_parser(
        "simulate-imds", help="serve a faithful Azure IMDS simulator on 127.0.0.1"
    )
    sim_imds.add_argument(
        "--port",
        type=int,
        action="append",
        help="port of one VM's IMDS; repeat for several VMs of one scale set (0 = any free)",
    )
    sim_imds.add_argument(
        "--vm",
        action="append",
        help="VM name served on the matching --port (default aks-spot-12345678-vmss_<n>)",
    )
    sim_imds.add_argument("--host", default="127.0.0.1", help="listen address")
    sim_imds.add_argument("--scenario", help="scripted scenario to play (see --list-scenarios)")
    sim_imds.add_argument("--list-scenarios", action="store_true", help="list scenarios, exit")
    sim_imds.add_argument(
        "--speedup", type=float, default=1.0, help="shorten scenario durations (not NotBefore)"
    )
    sim_imds.add_argument(
        "--enablement",
        type=float,
        default=0.0,
        help="answer 410 Gone for this many seconds after the first request",
    )
    sim_imds.add_argument(
        "--notice",
        type=float,
        help="override the scenario's notice: seconds until NotBefore (real time)",
    )
    sim_imds.add_argument(
        "--log-format", choices=["json", "console"], default="json", help="stderr log format"
    )
    sim_imds.add_argument(
        "--log-level", choices=["debug", "info", "warning", "error"], default="info"
    )
    sim_imds.set_defaults(func=_sim("imds"))

    sim_cluster = sub.add_parser(
        "simulate-cluster", help="serve an emulated Kubernetes API server on 127.0.0.1"
    )
    sim_cluster.add_argument("--port", type=int, default=0, help="listen port (0 = any free)")
    sim_cluster.add_argument(
        "--kubeconfig", type=Path, required=True, help="write a kubeconfig for it here"
    )
    sim_cluster.add_argument("--scenario", default="empty", help="objects to start with")
    sim_cluster.add_argument(
        "--request-log",
        type=Path,
        metavar="FILE",
        help="on shutdown, write the whole request log here as JSON lines (atomically)",
    )
    sim_cluster.set_defaults(func=_sim("cluster"))

    sim_sb = sub.add_parser(
        "simulate-servicebus",
        help="serve a local Azure Service Bus (AMQP 1.0) for the azure-servicebus SDK on 127.0.0.1",
        description="Prints one JSON line with the connection string (UseDevelopmentEmulator=true, "
        "plain AMQP), then serves until SIGTERM. Queues are created on first use unless --strict.",
    )
    sim_sb.add_argument("--port", type=int, default=5672, help="listen port (0 = any free)")
    sim_sb.add_argument("--host", default="127.0.0.1", help="listen address")
    sim_sb.add_argument("--queue", action="append", help="declare a queue; repeat for several")
    sim_sb.add_argument(
        "--topic", action="append", help="declare a topic and its subscriptions: NAME:SUB1,SUB2"
    )
    sim_sb.add_argument("--lock-duration", type=float, default=60.0, help="PEEK_LOCK seconds")
    sim_sb.add_argument("--max-delivery-count", type=int, default=10, help="then dead-letter")
    sim_sb.add_argument(
        "--max-message-size", type=int, default=256 * 1024, help="bytes (Standard tier: 256 KiB)"
    )
    sim_sb.add_argument("--strict", action="store_true", help="unknown entities are not found")
    sim_sb.add_argument(
        "--log-format", choices=["json", "console"], default="json", help="stderr log format"
    )
    sim_sb.add_argument(
        "--log-level", choices=["debug", "info", "warning", "error"], default="info"
    )
    sim_sb.set_defaults(func=_sim("servicebus"))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result: int = args.func(args)
    except ConfigError as exc:
        for line in str(exc).splitlines():
            print(f"spotguard: {line}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return 130
    return result
