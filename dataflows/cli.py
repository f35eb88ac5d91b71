"""``riskstream``: the one command-line entry point."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

from dataflows.settings import Settings, load_settings
from operators.errors import ConfigError, RiskstreamError

log = logging.getLogger("riskstream")

EPOCH_WITHOUT_RECOVERY = timedelta(days=1)
"""Bytewax epoch of a run without recovery, where nothing is snapshotted. At every epoch
boundary Bytewax's input stops polling until the outputs have finished the last epoch,
and each partition's epoch clock advances only when that partition is polled, so the
clocks of idle and busy partitions drift apart: with 5 s epochs the busy partitions
stood still longer at every boundary, and decision latency grew through a run."""


def epoch_interval(snapshot_s: float, recovering: bool) -> timedelta:
    """Bytewax's epoch: the snapshot interval with recovery, else a day (see above)."""
    return timedelta(seconds=snapshot_s) if recovering else EPOCH_WITHOUT_RECOVERY


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    """Run the pre-trade flow against the configured broker and Redis."""
    from bytewax._bytewax import cli_main

    from dataflows.app import configure_models, kafka_flow, probes
    from dataflows.collect import collect_less
    from dataflows.kafka_io import ensure_topics
    from dataflows.metrics_server import serve_metrics
    from dataflows.redis_sink import check_redis
    from dataflows.warmup import warm_up_in_child

    settings = _with_model_flags(args, settings)
    if args.processes > 1:
        return _run_local_cluster(args, settings)
    if not settings.brokers or settings.redis_url is None:
        raise ConfigError(
            "riskstream run needs RISKSTREAM_KAFKA_BOOTSTRAP and RISKSTREAM_REDIS_URL"
            " (riskstream demo starts both locally)"
        )
    stop = threading.Event()
    _stop_on_signals(stop)  # from here on, SIGINT / SIGTERM stop the flow once it runs
    ensure_topics(settings, settings.topics.all())
    check_redis(settings.redis_url.get_secret_value())
    model_problems = configure_models(settings)
    recovery = _recovery(args)
    health = probes(settings, model_problems)
    serve_metrics(settings.metrics_port, settings.metrics_host, health)
    if settings.warm_up:  # /healthz answers "starting" meanwhile
        warm_up_in_child()
    flow = kafka_flow(
        settings, from_end=args.from_end, stop=stop, health=health, durable=recovery is not None
    )
    log.info("pre-trade flow starting on %s", settings.kafka_bootstrap)
    try:
        with collect_less():
            cli_main(
                flow,
                workers_per_process=args.workers,
                process_id=args.process_id,
                addresses=args.addresses.split(";") if args.addresses else None,
                epoch_interval=epoch_interval(args.snapshot_interval, recovery is not None),
                recovery_config=recovery,
            )
    except Exception as exc:
        if not _interrupted(exc):
            raise
    log.info("pre-trade flow stopped")
    return 0


def _with_model_flags(args: argparse.Namespace, settings: Settings) -> Settings:
    """Settings with ``--models`` / ``--shadow-models`` applied (flags win over variables)."""
    update = {}
    if args.models is not None:
        update["model_dir"] = args.models
    if args.shadow_models is not None:
        update["shadow_model_dir"] = args.shadow_models
    return settings.model_copy(update=update) if update else settings


def _recovery(args: argparse.Namespace) -> Any:
    """Bytewax recovery from ``--recovery-dir`` (initialised the first time), or None."""
    from bytewax.recovery import RecoveryConfig, init_db_dir

    if args.recovery_dir is None:
        return None
    if not any(args.recovery_dir.glob("*.sqlite3")):
        args.recovery_dir.mkdir(parents=True, exist_ok=True)
        init_db_dir(args.recovery_dir, args.recovery_partitions)
    return RecoveryConfig(str(args.recovery_dir), timedelta(seconds=args.backup_interval))


def _run_local_cluster(args: argparse.Namespace, settings: Settings) -> int:
    """``--processes N``: N cooperating ``riskstream run`` processes on this host.

    Each child gets ``-i K -a <N loopback addresses>`` and the metrics port + K; the
    recovery directory is initialised once, here. SIGINT / SIGTERM are passed on; when one
    process ends with an error, the others are stopped. The exit status is the worst one.
    """
    import os
    import subprocess
    import time

    from dataflows.embedded import free_port

    if args.process_id is not None or args.addresses:
        raise ConfigError("--processes starts its own cluster on this host; drop -i/-a")
    _recovery(args)
    if settings.warm_up:
        from dataflows.warmup import warm_up_in_child

        warm_up_in_child()  # once for all: the children find the kernels compiled
    addresses = ";".join(f"127.0.0.1:{free_port()}" for _ in range(args.processes))
    children = []
    for k in range(args.processes):
        env = dict(os.environ)
        env["RISKSTREAM_WARM_UP"] = "false"
        env["RISKSTREAM_METRICS_PORT"] = str(
            settings.metrics_port + k if settings.metrics_port else 0
        )
        argv = [sys.executable, "-m", "dataflows.cli", *_child_argv(args, k, addresses)]
        children.append(subprocess.Popen(argv, env=env))
    log.info("started %d processes: %s", len(children), ", ".join(str(c.pid) for c in children))

    def forward(signum: int, _frame: object) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)
    while any(c.poll() is None for c in children):
        if any(c.returncode not in (None, 0) for c in children):
            forward(signal.SIGTERM, None)
        time.sleep(0.2)
    return max(abs(c.returncode) for c in children)


def _child_argv(args: argparse.Namespace, process_id: int, addresses: str) -> list[str]:
    """The ``riskstream run`` arguments of process ``process_id`` of a local cluster."""
    argv = ["-v"] if args.verbose else []
    argv += ["run", "-w", str(args.workers), "-i", str(process_id), "-a", addresses]
    argv += ["--snapshot-interval", str(args.snapshot_interval)]
    if args.recovery_dir is not None:
        argv += ["--recovery-dir", str(args.recovery_dir)]
        argv += ["--recovery-partitions", str(args.recovery_partitions)]
        argv += ["--backup-interval", str(args.backup_interval)]
    if args.from_end:
        argv.append("--from-end")
    if args.models is not None:
        argv += ["--models", str(args.models)]
    if args.shadow_models is not None:
        argv += ["--shadow-models", str(args.shadow_models)]
    return argv


def _stop_on_signals(stop: threading.Event) -> None:
    """SIGINT / SIGTERM end the input gracefully; a second SIGINT interrupts at once."""

    def graceful(signum: int, _frame: object) -> None:
        log.info("stopping (signal %d): finishing the current batch and flushing outputs", signum)
        stop.set()
        signal.signal(signal.SIGINT, signal.default_int_handler)

    signal.signal(signal.SIGINT, graceful)
    signal.signal(signal.SIGTERM, graceful)


def _interrupted(exc: BaseException | None) -> bool:
    """True when Bytewax stopped because of Ctrl-C / SIGINT (it wraps KeyboardInterrupt)."""
    while exc is not None:
        if isinstance(exc, KeyboardInterrupt):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def cmd_watch(args: argparse.Namespace, settings: Settings) -> int:
    """Print decisions from risk.scores as they arrive."""
    from dataflows.app import codec_for
    from dataflows.console import decision_line
    from dataflows.kafka_io import check_broker, follow

    check_broker(settings)
    codec = codec_for(settings)
    color = sys.stdout.isatty()
    shown = 0
    for _, value, _ in follow(settings, settings.topics.name("scores"), from_beginning=args.all):
        if value is None:
            continue
        print(decision_line(codec.decode("RiskScore", value), color), flush=True)
        shown += 1
        if args.count and shown >= args.count:
            return 0
    return 0


def cmd_control(args: argparse.Namespace, settings: Settings) -> int:
    """Sign a control command and publish it to risk.control."""
    from dataflows.app import codec_for
    from dataflows.control_cli import ACTIONS, signed_command
    from dataflows.kafka_io import Publisher, check_broker

    if args.action == "set-limit" and (args.limit is None or args.value is None):
        raise ConfigError("set-limit needs --limit NAME and --value NUMBER")
    command = signed_command(
        settings,
        ACTIONS[args.action],
        args.scope.upper(),
        args.target or "",
        issuer=args.issuer,
        reason=args.reason,
        limit_name=args.limit,
        limit_value=args.value,
    )
    check_broker(settings)
    publisher = Publisher(settings, codec_for(settings))
    publisher.send("control", "ControlCommand", command, command["target"] or "GLOBAL")
    if publisher.flush():
        raise RiskstreamError("the control command was not delivered; is the broker up?")
    print(
        f"sent {command['action']} {command['scope']} {command['target']} ({command['command_id']})"
    )
    return 0


def _add_run(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run the pre-trade flow on the configured broker and Redis")
    p.add_argument("-w", "--workers", type=_positive_int, default=1, help="worker threads")
    p.add_argument("-i", "--process-id", type=int, default=None, help="this process's index")
    p.add_argument("-a", "--addresses", default=None, help='all processes, "h1:p1;h2:p2"')
    p.add_argument("--recovery-dir", type=Path, default=None, help="enable Bytewax recovery")
    p.add_argument("--recovery-partitions", type=_positive_int, default=1)
    p.add_argument(
        "--snapshot-interval", type=_positive_float, default=5.0,
        help="seconds between recovery snapshots (with --recovery-dir)",
    )  # fmt: skip
    p.add_argument("--backup-interval", type=float, default=0.0, help="seconds")
    p.add_argument("--from-end", action="store_true", help="ignore messages already on the topics")
    p.add_argument(
        "-p", "--processes", type=_positive_int, default=1,
        help="start N cooperating processes on this host (metrics ports PORT..PORT+N-1)",
    )  # fmt: skip
    p.add_argument(
        "--models", type=Path, default=None, metavar="DIR",
        help="live model set: manifest.json + artifacts (default: RISKSTREAM_MODEL_DIR,"
        " else the shipped models)",
    )  # fmt: skip
    p.add_argument(
        "--shadow-models", type=Path, default=None, metavar="DIR",
        help="candidate model set run in shadow: agreement metrics only, decisions unchanged",
    )  # fmt: skip
    p.set_defaults(func=cmd_run)


def _add_control(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("control", help="sign and send a control command")
    p.add_argument("action", choices=["halt", "reduce-only", "resume", "set-limit"])
    p.add_argument("--scope", choices=["global", "portfolio", "instrument"], default="global")
    p.add_argument("--target", help="portfolio_id or instrument_id for a scoped command")
    p.add_argument("--limit", help="set-limit: the limit name (e.g. max_order_notional)")
    p.add_argument("--value", type=float, help="set-limit: the new value")
    p.add_argument("--reason", default="", help="free text for the audit trail")
    p.add_argument("--issuer", default="riskstream-cli")
    p.set_defaults(func=cmd_control)


def _add_watch(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("watch", help="print decisions from risk.scores as they arrive")
    p.add_argument("--all", action="store_true", help="start from the beginning of the topic")
    p.add_argument("--count", type=_positive_int, default=None, help="stop after N decisions")
    p.set_defaults(func=cmd_watch)


def cmd_warm_up(args: argparse.Namespace, settings: Settings) -> int:
    """Compile the kernels into Numba's on-disk cache (an install or image build step)."""
    from dataflows.app import configure_models
    from dataflows.warmup import warm_up

    configure_models(settings)
    print(f"riskstream warm-up: {warm_up(settings)}")
    return 0


def _add_warm_up(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "warm-up",
        help="run the flow in memory over simulated data: compiles and caches the kernels",
    )
    p.set_defaults(func=cmd_warm_up)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    from dataflows.backtest import add_backtest_parser
    from dataflows.demo import add_demo_parser
    from dataflows.diff import add_diff_parser
    from dataflows.model_cli import add_model_parsers
    from dataflows.producer import add_produce_parser
    from dataflows.replay import add_replay_parser

    parser = argparse.ArgumentParser(
        prog="riskstream", description="Real-time pre-trade risk on Bytewax."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_demo_parser(sub)
    _add_run(sub)
    add_produce_parser(sub)
    _add_control(sub)
    _add_watch(sub)
    add_replay_parser(sub)
    add_diff_parser(sub)
    add_backtest_parser(sub)
    add_model_parsers(sub)
    _add_warm_up(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: parse arguments, load settings, run the subcommand, report errors."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    func: Callable[[argparse.Namespace, Settings], int] = args.func
    try:
        return func(args, load_settings())
    except RiskstreamError as exc:
        print(f"riskstream {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
