"""The ``milkguard`` command.

    milkguard run [--config FILE] [--plan PLAN] [--no-simulators] ...   the stream service
    milkguard edge run --config EDGE.yaml                               the gateway agent
    milkguard edge check --config EDGE.yaml                             validate, read once
    milkguard replay --plan PLAN FILE.jsonl|-                          judge recorded payloads
    milkguard bench engine [--assets N] [--seconds S]                   engine throughput
    milkguard bench fuzz [--payloads N] [--seed S] [--no-replay]        mutated payloads, 0 crashes
    milkguard plan check PLAN                                           validate a HACCP plan
    milkguard contract schema [--output FILE]                           wire contract JSON Schema
    milkguard broker hash-password | mosquitto-config --out DIR         MQTT broker security

Errors MilkGuard expects (bad settings, bad plan, missing broker) are printed without a traceback
and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import IO, TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from milkguard import __version__, logs
from milkguard.errors import ConfigError, MilkGuardError

if TYPE_CHECKING:
    from edge.config import EdgeConfig

EXIT_USAGE = 2


def _tolerance_hours(text: str) -> float:
    """A future tolerance in hours, bounded as the setting ``future_tolerance_h`` is."""
    try:
        hours = float(text)
    except ValueError:
        hours = math.nan
    if not 0 < hours <= 8760:  # NaN fails too
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a duration: give hours above 0 and at most 8760 (a year), e.g. 2"
        )
    return hours


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="milkguard",
        description="Live HACCP and cold-chain monitor for dairies.",
    )
    parser.add_argument("--version", action="version", version=f"milkguard {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser(
        "run",
        help="run the stream: broker, HACCP engine, stores (and the demo fleet by default)",
        description="Run the stream service. With no settings: an embedded MQTT broker on "
        "127.0.0.1:1883, the demo HACCP plan, and simulators for a farm tank, a milk truck and "
        "an HTST line. Settings come from --config and MILKGUARD_* variables.",
    )
    run.add_argument("--config", type=Path, help="settings file (YAML)")
    run.add_argument("--plan", type=Path, help="HACCP plan file (YAML); overrides the settings")
    run.add_argument("--data-dir", type=Path, help="where local stores are written")
    run.add_argument(
        "--no-simulators",
        action="store_true",
        help="serve real edge agents only: no demo fleet",
    )
    run.add_argument(
        "--duration", type=float, metavar="SECONDS", help="stop by itself after this long"
    )

    _add_edge_commands(commands)

    bridge = commands.add_parser(
        "bridge",
        help="MQTT to Kafka: every gateway batch, at least once, in order per gateway",
        description="Subscribe to every gateway's batches on the MQTT broker (mqtt.*) and produce "
        "them to Kafka (kafka.*), keyed by site; each is acknowledged to MQTT only once "
        "Kafka has it. Settings from --config and MILKGUARD_* variables.",
    )
    bridge.add_argument("--config", type=Path, help="settings file (YAML)")

    worker = commands.add_parser(
        "worker",
        help="the rule engine as a faust-streaming worker on Kafka",
        description="Judge the batches in Kafka (kafka.batches_topic) with the plan, one engine "
        "per partition, its state in a changelog-backed Faust table; deviations to "
        "kafka.deviations_topic, readings and deviations to InfluxDB (influx.*). Start as many "
        "as the topic has partitions; they split them. Settings from --config and MILKGUARD_*.",
    )
    worker.add_argument("--config", type=Path, help="settings file (YAML)")
    worker.add_argument("--plan", type=Path, help="HACCP plan file (overrides the settings)")

    replay = commands.add_parser(
        "replay",
        help="judge recorded wire payloads (JSON lines) and write deviations as JSON lines",
        description="Judge recorded wire-contract payloads, one per line ('-' for standard "
        "input), and write every deviation change as one JSON object per line. Deterministic: "
        "the clock is the data's own.",
    )
    replay.add_argument("file", help="JSON lines of v1 payloads, or - for standard input")
    replay.add_argument("--plan", type=Path, required=True, help="HACCP plan file (YAML)")
    replay.add_argument("--output", type=Path, help="write deviations here instead of stdout")
    replay.add_argument("--deadletter", type=Path, help="write rejected payloads here (JSONL)")
    replay.add_argument("--timeseries", type=Path, help="write line protocol into this folder")
    replay.add_argument(
        "--future-tolerance-h",
        type=_tolerance_hours,
        default=2.0,
        help="quarantine readings stamped further ahead of their batch's receive time (hours)",
    )

    simulate = commands.add_parser(
        "simulate",
        help="run a simulator scenario: write its payloads as JSON lines, or check it",
        description="Simulate a scenario (farms, trucks, plant lines with faults) on a simulated "
        "clock. Deterministic for its seed. --check replays it through the rule engine and "
        "compares with the deviations it expects.",
    )
    simulate.add_argument("scenario", type=Path)
    simulate.add_argument("--output", type=Path, help="write payloads here (default: stdout)")
    simulate.add_argument(
        "--check", action="store_true", help="replay and compare with the expected deviations"
    )
    simulate.add_argument("--mqtt", metavar="HOST:PORT", help="publish to this broker instead")
    simulate.add_argument(
        "--speed", type=float, help="with --mqtt: times faster than real time (default: the file's)"
    )

    load = commands.add_parser(
        "load",
        help="load generator: gateways x channels x rate to an MQTT broker, paced",
        description="Publish prepared batches of N gateways x channels at a sampling rate, "
        "paced to their schedule, and print the rate achieved (and whether it kept up).",
    )
    load.add_argument("--host", default="127.0.0.1")
    load.add_argument("--port", type=int, default=1883)
    load.add_argument("--gateways", type=int, default=100)
    load.add_argument("--channels", type=int, default=50)
    load.add_argument("--rate-hz", type=float, default=20.0)
    load.add_argument("--seconds", type=float, default=10.0)

    _add_bench_commands(commands)

    from alerts.cli import add_commands as add_alert_commands  # noqa: PLC0415

    add_alert_commands(commands)

    plan = commands.add_parser("plan", help="HACCP plan files")
    plan_commands = plan.add_subparsers(dest="plan_command", required=True, metavar="ACTION")
    check = plan_commands.add_parser("check", help="validate a plan and list its rules")
    check.add_argument("path", type=Path)

    contract = commands.add_parser("contract", help="the wire contract for gateways")
    contract_commands = contract.add_subparsers(
        dest="contract_command", required=True, metavar="ACTION"
    )
    schema = contract_commands.add_parser("schema", help="print the JSON Schema of a payload")
    schema.add_argument("--output", type=Path, help="write to this file instead of stdout")
    schema.add_argument(
        "--records", action="store_true", help="the signed records the stream publishes instead"
    )
    _add_stream_commands(commands)
    return parser


def _add_stream_commands(commands: Any) -> None:
    stream = commands.add_parser("stream", help="the stream's signing key")
    stream_commands = stream.add_subparsers(dest="stream_command", required=True, metavar="WHAT")
    public = stream_commands.add_parser(
        "public-key",
        help="the public key that checks the stream's signed deviations (alerts.stream_keys); "
        "the signing key is created if there is none",
    )
    public.add_argument("--config", type=Path, help="settings file (YAML): signing.key, data_dir")
    public.add_argument("--key", type=Path, help="the private key (default: from the settings)")
    public.add_argument("--output", type=Path, help="write the PEM here (default: stdout)")


def _add_edge_commands(commands: Any) -> None:
    edge = commands.add_parser("edge", help="the edge agent for farm, truck and plant gateways")
    edge_commands = edge.add_subparsers(dest="edge_command", required=True, metavar="ACTION")
    edge_run = edge_commands.add_parser(
        "run",
        help="sample sensors, store, and publish to the plant's broker",
        description="Run the edge agent: every source is sampled on its interval, every reading "
        "is stored on disk before it is sent, and sent in order when the link allows.",
    )
    edge_run.add_argument("--config", type=Path, required=True, help="edge config (YAML)")
    edge_run.add_argument(
        "--duration", type=float, metavar="SECONDS", help="stop by itself after this long"
    )
    edge_check = edge_commands.add_parser(
        "check",
        help="validate an edge config and read every source once",
        description="Validate the config and read each source once, showing what each channel "
        "reads now. Publishes nothing.",
    )
    edge_check.add_argument("--config", type=Path, required=True, help="edge config (YAML)")


def _add_bench_commands(commands: Any) -> None:
    _add_broker_commands(commands)

    bench = commands.add_parser("bench", help="benchmarks that print figures")
    bench_commands = bench.add_subparsers(dest="bench_command", required=True, metavar="WHAT")
    engine = bench_commands.add_parser(
        "engine", help="rule engine throughput on a realistic mix, one core"
    )
    engine.add_argument("--assets", type=int, default=1000)
    engine.add_argument("--seconds", type=int, default=120, help="seconds of data per asset")
    bench_edge = bench_commands.add_parser(
        "edge",
        help="edge agent: memory and CPU at 50 channels x 1 Hz, and backlog drain after 24 h",
        description="Run the edge agent as its own process against Mosquitto on 127.0.0.1 "
        "(or --mqtt): its resident memory and CPU while sampling, then how fast it drains an "
        "outbox holding a day-long outage.",
    )
    bench_edge.add_argument("--channels", type=int, default=50)
    bench_edge.add_argument("--seconds", type=float, default=60.0, help="footprint run length")
    bench_edge.add_argument("--hours", type=float, default=24.0, help="outage to drain")
    bench_edge.add_argument(
        "--cap", type=float, default=50_000, help="drain.max_readings_per_s of the agent"
    )
    bench_edge.add_argument("--mqtt", metavar="HOST:PORT", help="use this broker instead")
    pipeline = bench_commands.add_parser(
        "pipeline",
        help="end to end: readings/s, and p50/p99 latency from publish to deviation",
        description="A fleet of gateways through the whole pipeline: a backlog published as "
        "fast as MQTT takes it (readings/s end to end), then the fleet paced at --rate with a "
        "probe whose deviations are timed from publish to where a consumer reads them. "
        "Embedded by default; --kafka: Mosquitto, milkguard bridge, Kafka, milkguard worker.",
    )
    pipeline.add_argument("--kafka", action="store_true", help="the scaled-out pipeline")
    pipeline.add_argument("--gateways", type=int, default=100)
    pipeline.add_argument("--channels", type=int, default=100, help="per gateway, at 1 Hz")
    pipeline.add_argument(
        "--backlog-s", type=float, default=60.0, help="seconds of fleet data in the backlog"
    )
    pipeline.add_argument("--rate", type=float, default=10_000.0, help="paced readings/s")
    pipeline.add_argument("--seconds", type=float, default=20.0, help="of the paced phase")
    pipeline.add_argument("--workers", type=int, default=1, help="milkguard worker processes")
    pipeline.add_argument("--partitions", type=int, default=4, help="of the batches topic")
    pipeline.add_argument("--mqtt", metavar="HOST:PORT", help="a running broker (--kafka)")
    pipeline.add_argument("--bootstrap", metavar="HOST:PORT", help="a running Kafka (--kafka)")
    fuzz = bench_commands.add_parser(
        "fuzz",
        help="mutated payloads through the live ingest path and milkguard replay: 0 crashes",
        description="Generate mutated payloads from valid batches of a plan (truncated JSON, "
        "wrong types, invalid UTF-8, NaN, extreme numbers and timestamps, huge seq, odd ids, "
        "invented gateways, 10 MB payloads, ...), feed them through the live ingest path and "
        "the milkguard replay command, and check that nothing raised and every message and "
        "reading is counted. Exit status 1 when a crash or a broken count was found.",
    )
    fuzz.add_argument("--payloads", type=int, default=1_000_000)
    fuzz.add_argument("--seed", type=int, default=1)
    fuzz.add_argument("--plan", type=Path, help="HACCP plan (default: the example plant plan)")
    fuzz.add_argument(
        "--replay",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also through milkguard replay (default: on)",
    )
    fuzz.add_argument(
        "--crash-dir",
        type=Path,
        default=Path("fuzz-crashes"),
        help="where payloads that raised are saved",
    )
    fuzz.add_argument(
        "--skip", default="", metavar="CLASS,...", help="leave these mutation classes out"
    )


def _add_broker_commands(commands: Any) -> None:
    broker = commands.add_parser("broker", help="MQTT broker security: passwords, Mosquitto")
    broker_commands = broker.add_subparsers(dest="broker_command", required=True, metavar="WHAT")
    hashing = broker_commands.add_parser(
        "hash-password",
        help="print the password_hash of an mqtt.security user (password read from stdin)",
        description="Read a password (prompted on a terminal, else the first line of standard "
        "input; never an argument, which others can see) and print its PBKDF2-SHA512 hash in "
        "the $7$ format both the embedded broker and Mosquitto 2.0 accept.",
    )
    hashing.add_argument("--iterations", type=int, default=None, help="PBKDF2 rounds")
    mosquitto = broker_commands.add_parser(
        "mosquitto-config",
        help="write mosquitto.conf, passwd and acl from mqtt.security",
        description="Generate a Mosquitto 2.0 configuration from the same security model the "
        "embedded broker enforces: users and password hashes, per-gateway ACL, TLS, "
        "persistence, and queues sized for an outage of the stream.",
    )
    mosquitto.add_argument("--config", type=Path, help="settings file (YAML)")
    mosquitto.add_argument("--out", type=Path, required=True, help="folder to write into")
    mosquitto.add_argument(
        "--bind",
        help="address of the TLS listener (default: mqtt.host; e.g. 0.0.0.0 when mqtt.host "
        "is where the services connect)",
    )
    mosquitto.add_argument("--port", type=int, help="port of that listener (default: mqtt.port)")
    mosquitto.add_argument(
        "--conf-dir", type=Path, help="where the files will live on the broker (default: --out)"
    )
    mosquitto.add_argument(
        "--persistence-dir", type=Path, default=Path("/var/lib/mosquitto"), help="its store"
    )
    mosquitto.add_argument(
        "--outage-hours", type=float, default=24.0, help="how long the stream may be away"
    )
    mosquitto.add_argument(
        "--gateways", type=int, help="count for the queue sizing (default: the gateway users)"
    )
    mosquitto.add_argument(
        "--batch-bytes", type=int, default=8192, help="size of a large batch, for the sizing"
    )


def _broker(args: argparse.Namespace) -> int:
    from milkguard import broker_security as security  # noqa: PLC0415

    if args.broker_command == "hash-password":
        if sys.stdin.isatty():
            import getpass  # noqa: PLC0415

            password = getpass.getpass("password: ")
        else:
            password = sys.stdin.readline().rstrip("\r\n")
        if not password:
            raise ConfigError("no password given (type it, or pipe it on standard input)")
        iterations = args.iterations or security.HASH_ITERATIONS
        print(security.hash_password(password, iterations=iterations))
        return 0
    from milkguard.settings import load_settings  # noqa: PLC0415

    settings = load_settings(args.config)
    model = settings.mqtt.security
    gateways = args.gateways
    if gateways is None:
        gateways = len(security.known_gateways(settings))
    out = args.out
    try:
        files = security.mosquitto_files(
            model,
            args.bind or settings.mqtt.host,
            args.port or settings.mqtt.port,
            conf_dir=(args.conf_dir or out).absolute(),
            persistence_dir=args.persistence_dir,
            sizing=security.QueueSizing(
                gateways, outage_h=args.outage_hours, batch_bytes=args.batch_bytes
            ),
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    try:
        out.mkdir(parents=True, exist_ok=True)
        for name, text in files.items():
            path = out / name
            path.write_text(text, encoding="utf-8")
            if name == "passwd":
                path.chmod(0o600)  # hashes only, but no reason to let others guess at them
    except OSError as exc:
        raise ConfigError(f"cannot write the Mosquitto files into {out}: {exc.strerror}") from exc
    Console(stderr=True).print(
        f"wrote {', '.join(sorted(files))} into {out} ({len(model.users)} users)", markup=False
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``milkguard`` console script."""
    args = _parser().parse_args(argv)
    err = Console(stderr=True)
    commands: dict[str, Callable[[argparse.Namespace], int]] = {
        "run": _run,
        "edge": _edge,
        "bridge": _bridge,
        "worker": _worker,
        "replay": _replay,
        "simulate": _simulate,
        "load": _load,
        "bench": _bench,
        "plan": lambda a: _plan_check(a.path),
        "alerts": _alerts,
        "audit": _audit,
        "broker": _broker,
        "contract": lambda a: _schema(a.output, records=a.records),
        "stream": _stream_public_key,
    }
    try:
        return commands[args.command](args)
    except MilkGuardError as exc:
        # the message quotes files, commands and values: text, never markup; and no secret
        message = logs.mask(str(exc))
        err.print(
            Text.assemble(("error:", "bold red"), " ", message), highlight=False, soft_wrap=True
        )
        return EXIT_USAGE
    except KeyboardInterrupt:
        err.print("interrupted")
        return 130
    except BrokenPipeError:
        # the reader went away (e.g. `milkguard simulate ... | head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


def _run(args: argparse.Namespace) -> int:
    from milkguard import logs  # noqa: PLC0415 - keep `milkguard plan check` quick
    from milkguard.settings import load_settings  # noqa: PLC0415
    from stream.embedded import EmbeddedService  # noqa: PLC0415

    overrides: dict[str, object] = {}
    if args.plan is not None:
        overrides["plan"] = args.plan
    if args.data_dir is not None:
        overrides["data_dir"] = args.data_dir
    if args.no_simulators:
        overrides["simulators"] = False
    settings = load_settings(args.config, **overrides)
    logs.configure(settings.log_level, settings.log_format)
    import logging  # noqa: PLC0415

    logging.getLogger("milkguard").info("settings", extra={"settings": settings.redacted()})
    service = EmbeddedService(settings)
    stop = stop_on_signals()
    service.run(stop, args.duration)
    return 0


def stop_on_signals() -> threading.Event:
    """An event set by Ctrl-C or SIGTERM, for a clean stop; a second Ctrl-C interrupts at once."""
    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()
        signal.signal(signal.SIGINT, signal.default_int_handler)

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    return stop


def _bridge(args: argparse.Namespace) -> int:
    from contextlib import ExitStack  # noqa: PLC0415

    from milkguard import logs  # noqa: PLC0415
    from milkguard.settings import broker_address, load_settings  # noqa: PLC0415
    from stream.bridge import Bridge, KafkaTarget  # noqa: PLC0415
    from stream.metrics import BridgeCollector, MetricsServer  # noqa: PLC0415

    settings = load_settings(args.config)
    logs.configure(settings.log_level, settings.log_format)
    kafka = settings.kafka
    bridge = Bridge(
        broker_address(settings),
        KafkaTarget(
            kafka.bootstrap_servers,
            kafka.batches_topic,
            kafka.deadletter_topic,
            kafka.client_options(),
        ),
        f"{settings.mqtt.client_id}-bridge",
        settings.mqtt.queue_size,
    )
    stop = stop_on_signals()
    with ExitStack() as stack:
        if settings.metrics.port is not None:
            collector = BridgeCollector(lambda: bridge.counters, bridge.ready.is_set)
            stack.enter_context(
                MetricsServer(collector, settings.metrics.host, settings.metrics.port)
            )
        bridge.run(stop)
    return 0


def _worker(args: argparse.Namespace) -> int:
    from milkguard import logs  # noqa: PLC0415
    from milkguard.settings import load_settings  # noqa: PLC0415
    from stream.worker import build_worker, run_worker  # noqa: PLC0415

    overrides: dict[str, object] = {}
    if args.plan is not None:
        overrides["plan"] = args.plan
    settings = load_settings(args.config, **overrides)
    logs.configure(settings.log_level, settings.log_format)
    import logging  # noqa: PLC0415

    logging.getLogger("milkguard").info("settings", extra={"settings": settings.redacted()})
    return run_worker(build_worker(settings))


def _edge(args: argparse.Namespace) -> int:
    from edge.config import load_edge_config  # noqa: PLC0415 - only what a gateway needs
    from milkguard import logs  # noqa: PLC0415

    config = load_edge_config(args.config)
    logs.register_secrets(config)  # the broker password never reaches a log line
    if args.edge_command == "check":
        return _edge_check(config)
    from edge.agent import EdgeAgent  # noqa: PLC0415

    logs.configure(config.log_level, config.log_format)
    agent = EdgeAgent(config)
    stop = stop_on_signals()
    timer = threading.Timer(args.duration or 0, stop.set)
    timer.daemon = True
    if args.duration is not None:
        timer.start()
    try:
        agent.run(stop)
    finally:
        timer.cancel()
    return 0


def _edge_check(config: EdgeConfig) -> int:
    from edge.agent import make_driver  # noqa: PLC0415
    from edge.drivers.base import DriverError  # noqa: PLC0415

    # every cell quotes the config or a driver's error (a command's stderr): text, not markup
    table = Table(title=escape(f"{config.site}/{config.gateway}: one read of every source"))
    for column in ("source", "driver", "asset/channel", "value", "local limits"):
        table.add_column(column)
    failed = 0
    for source in config.sources:
        try:
            driver = make_driver(source)
            try:
                values: list[float | None] = driver.read()
            finally:
                driver.close()
        except DriverError as exc:
            failed += 1
            table.add_row(
                Text(source.name), Text(source.driver), "", Text(exc.problem, style="red"), ""
            )
            continue
        for channel, value in zip(source.channels, values, strict=True):
            limits = channel.limits
            shown = (
                Text("no value", style="yellow")
                if value is None
                else Text(f"{value:g} {channel.unit}")
            )
            if value is not None and limits is not None and limits.breached(value):
                shown = Text(f"{value:g} {channel.unit} (alarm)", style="red")
            bounds = "" if limits is None else f"{_bound(limits.low)} .. {_bound(limits.high)}"
            table.add_row(
                Text(source.name),
                Text(source.driver),
                Text(f"{channel.asset}/{channel.channel}"),
                shown,
                bounds,
            )
    Console().print(table)
    return 1 if failed else 0


def _bound(limit: float | None) -> str:
    return "-" if limit is None else f"{limit:g}"


def _replay(args: argparse.Namespace) -> int:
    from milkguard import logs  # noqa: PLC0415
    from stream.plan import load_plan  # noqa: PLC0415
    from stream.replay import open_source, replay  # noqa: PLC0415

    logs.configure("WARNING")
    loaded = load_plan(args.plan)
    try:
        source, name, size = open_source(args.file)
    except OSError as exc:
        raise ConfigError(f"cannot read {args.file}: {exc.strerror}") from exc
    err = Console(stderr=True)
    with source, _output(args.output) as out:
        summary = replay(
            loaded,
            source,
            out,
            name=name,
            deadletter=args.deadletter,
            timeseries=args.timeseries,
            progress_total=size,
            future_tolerance_ms=round(args.future_tolerance_h * 3_600_000),
        )
    err.print(
        f"replayed {summary.lines:,} lines: {summary.batches:,} batches, "
        f"{summary.readings:,} readings, {summary.deviation_changes:,} deviation changes, "
        f"{summary.rejected:,} rejected, {summary.duplicates:,} duplicate batches, "
        f"{summary.late:,} late readings",
        highlight=False,
        soft_wrap=True,
    )
    err.print(
        f"readings: {summary.rejected_readings:,} dead-lettered alone (of which "
        f"{summary.readings_quarantined:,} quarantined: stamped too far ahead), "
        f"{summary.readings_duplicate:,} in duplicate batches, "
        f"{summary.readings_in_rejected_payloads:,} in {summary.rejected_payloads:,} payloads "
        f"rejected whole; {summary.events_quarantined:,} events quarantined",
        highlight=False,
        markup=False,
        soft_wrap=True,
    )
    for letter in summary.first_rejections:
        err.print(
            f"  rejected {letter.topic}: {letter.reason}",
            highlight=False,
            markup=False,
            soft_wrap=True,
        )
    return 0


@contextmanager
def _output(path: Path | None) -> Iterator[IO[str]]:
    if path is None:
        yield sys.stdout
        return
    try:
        file = path.open("w", encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror}") from exc
    with file:
        yield file


def _simulate(args: argparse.Namespace) -> int:
    from simulators.check import check  # noqa: PLC0415
    from simulators.runner import simulate  # noqa: PLC0415
    from simulators.scenario import load_scenario  # noqa: PLC0415

    if args.check:
        from milkguard import logs  # noqa: PLC0415

        logs.configure("ERROR")  # rejections a scenario provokes are in its verdict's counts
        return _show_verdict(check(args.scenario))
    scenario, _ = load_scenario(args.scenario)
    if args.mqtt:
        return _simulate_to_broker(scenario, args.mqtt, args.speed or scenario.speed)
    with _output(args.output) as out:
        for payload in simulate(scenario):
            out.write(payload.decode() + "\n")
    return 0


def _simulate_to_broker(scenario: Any, where: str, speed: float) -> int:
    from milkguard import mqtt as mqtt_connect  # noqa: PLC0415
    from simulators.load import Message, publish_paced  # noqa: PLC0415
    from simulators.runner import simulate_timed  # noqa: PLC0415

    host, _, port = where.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"--mqtt takes HOST:PORT, got {where!r}")
    start_ms = int(scenario.start.timestamp() * 1000)
    messages = [
        Message(o.topic, o.payload, 0, max(0.0, (o.send_ms - start_ms) / 1000))
        for o in simulate_timed(scenario)
    ]
    connection = mqtt_connect.connect(mqtt_connect.BrokerAddress(host, int(port)), "simulator")
    with _bar(len(messages), escape(f"{scenario.scenario} at {speed:g}x")) as advance:
        result = publish_paced(connection, messages, speed=speed, progress=lambda _: advance(1))
    connection.close()
    Console().print(f"published {result.messages:,} batches in {result.elapsed_s:.1f} s")
    if result.unacknowledged:
        Console(stderr=True).print(f"[red]{result.unacknowledged:,} batches not acknowledged[/]")
        return 1
    return 0


def _load(args: argparse.Namespace) -> int:
    from milkguard import mqtt as mqtt_connect  # noqa: PLC0415
    from simulators.load import prepare, publish_paced  # noqa: PLC0415

    console = Console()
    with console.status("preparing payloads ..."):
        messages = prepare(args.gateways, args.channels, args.rate_hz, args.seconds)
    total = sum(m.readings for m in messages)
    connection = mqtt_connect.connect(mqtt_connect.BrokerAddress(args.host, args.port), "load")
    with _bar(total, "publishing readings") as advance:
        result = publish_paced(connection, messages, progress=advance)
    connection.close()
    for line in result.lines():
        console.print(line, highlight=False, markup=False)
    return 0 if result.kept_up else 1


@contextmanager
def _bar(total: int, label: str) -> Iterator[Callable[[int], None]]:
    """A progress bar on stderr for long work (silent when stderr is not a terminal)."""
    from rich.progress import Progress  # noqa: PLC0415

    with Progress(console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(label, total=total)
        yield lambda amount: bar.advance(task, amount)


def _show_verdict(verdict: Any) -> int:
    console = Console()
    # kinds and assets come from the scenario and the plan: text, not markup
    table = Table(title=escape(f"scenario {verdict.scenario}"), title_justify="left")
    for column in ("", "kind", "asset", "start h", "end h"):
        table.add_column(column)
    for _, found in verdict.matched:
        end = "open" if found.end_h is None else f"{found.end_h:.2f}"
        table.add_row(
            "[green]found[/]", Text(found.kind), Text(found.asset), f"{found.start_h:.2f}", end
        )
    for expected in verdict.missing:
        end = "open" if expected.end_h is None else f"{expected.end_h:.2f}"
        table.add_row(
            "[red]missing[/]",
            Text(expected.kind),
            Text(expected.asset),
            f"{expected.start_h:.2f}",
            end,
        )
    for found in verdict.unexpected:
        end = "open" if found.end_h is None else f"{found.end_h:.2f}"
        table.add_row(
            "[red]unexpected[/]", Text(found.kind), Text(found.asset), f"{found.start_h:.2f}", end
        )
    console.print(table)
    summary = verdict.summary
    console.print(
        f"{summary.batches:,} batches, {summary.readings:,} readings, {summary.duplicates:,} "
        f"duplicates, {summary.rejected:,} rejected, {summary.late:,} late",
        highlight=False,
    )
    console.print("[green]passed[/]" if verdict.passed else "[red]failed[/]")
    return 0 if verdict.passed else 1


def _bench(args: argparse.Namespace) -> int:
    if args.bench_command == "edge":
        return _bench_edge(args)
    if args.bench_command == "pipeline":
        return _bench_pipeline(args)
    if args.bench_command == "fuzz":
        return _bench_fuzz(args)
    return _bench_engine(args.assets, args.seconds)


def _bench_edge(args: argparse.Namespace) -> int:
    from rich.progress import Progress  # noqa: PLC0415

    from edge import bench  # noqa: PLC0415

    console = Console()
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task(f"footprint: {args.channels} channels at 1 Hz", total=1.0)
        used = bench.footprint(
            args.channels, args.seconds, args.mqtt, lambda f: progress.update(task, completed=f)
        )
        stages = {
            "fill": progress.add_task(f"storing a {args.hours:g} h backlog", total=1.0),
            "drain": progress.add_task("draining it", total=1.0),
        }
        drained = bench.drain(
            args.hours,
            args.channels,
            args.cap,
            args.mqtt,
            lambda stage, f: progress.update(stages[stage], completed=f),
        )
    table = Table(title=f"edge agent on {bench.machine()}")
    table.add_column("measure")
    table.add_column("figure", justify="right")
    table.add_column("target", justify="right")
    rss = f"{used.rss_peak_mb:.1f} MB peak, {used.rss_end_mb:.1f} MB at the end"
    table.add_row(f"resident memory, {used.channels} ch x 1 Hz", rss, "< 60 MB")
    table.add_row("CPU, share of one core", f"{used.cpu_percent:.2f} %", "")
    table.add_row(
        "readings at the broker", f"{used.readings_received:,} in {used.seconds:.0f} s", ""
    )
    table.add_row(
        f"backlog drain, {args.hours:g} h x {args.channels} ch",
        f"{drained.per_second:,.0f} readings/s",
        ">= 20,000/s",
    )
    table.add_row(
        "  backlog",
        f"{drained.readings:,} readings, {drained.outbox_mb:.0f} MB, "
        f"drained in {drained.drain_s:.1f} s (cap {drained.cap_per_s:,.0f}/s)",
        "",
    )
    table.add_row("  resident memory while draining", f"{drained.rss_peak_mb:.1f} MB peak", "")
    console.print(table)
    return 0


def _bench_engine(assets: int, seconds: int) -> int:
    from stream.bench import run  # noqa: PLC0415

    console = Console()
    with console.status(f"benchmarking the engine on {assets:,} assets ..."):
        result = run(assets=assets, seconds=seconds)
    for line in result.lines():
        console.print(line, highlight=False, markup=False)
    return 0


def _bench_fuzz(args: argparse.Namespace) -> int:
    from rich.markup import escape  # noqa: PLC0415
    from rich.progress import MofNCompleteColumn, Progress, TimeRemainingColumn  # noqa: PLC0415

    from stream import fuzz  # noqa: PLC0415

    console = Console()
    columns = (*Progress.get_default_columns()[:2], MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        tasks: dict[str, Any] = {}

        def advance(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = progress.add_task(stage, total=total)
            progress.update(tasks[stage], completed=done, total=total)

        report = fuzz.run(
            args.payloads,
            seed=args.seed,
            plan=args.plan,
            replay=args.replay,
            crash_dir=args.crash_dir,
            progress=advance,
            skip=frozenset(name for name in args.skip.split(",") if name),
        )
    for table in report.tables():
        console.print(table)
    for problem in report.broken:
        console.print(f"[red]broken:[/] {escape(problem)}", highlight=False)
    if report.crashes.total:
        console.print(
            f"[red]{report.crashes.total:,} crashes[/]; payloads saved in "
            f"{escape(str(args.crash_dir))}",
            highlight=False,
        )
    return 0 if report.ok else 1


def _bench_pipeline(args: argparse.Namespace) -> int:
    import platform  # noqa: PLC0415

    from stream import pipeline_bench  # noqa: PLC0415

    console = Console()
    with console.status("starting the pipeline ...") as status:
        result = pipeline_bench.run(
            kafka=args.kafka,
            gateways=args.gateways,
            channels=args.channels,
            backlog_s=args.backlog_s,
            rate=args.rate,
            seconds=args.seconds,
            workers=args.workers,
            partitions=args.partitions,
            mqtt=args.mqtt,
            bootstrap=args.bootstrap,
            progress=lambda step: status.update(f"{step} ..."),
        )
    for line in result.lines():
        console.print(line, highlight=False, markup=False)
    console.print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}",
        highlight=False,
    )
    return 0


def _alerts(args: argparse.Namespace) -> int:
    from alerts.cli import run_alerts  # noqa: PLC0415

    return run_alerts(args)


def _audit(args: argparse.Namespace) -> int:
    from alerts.cli import run_audit  # noqa: PLC0415

    return run_audit(args)


def _plan_check(path: Path) -> int:
    from stream.plan import Htst, StorageAge, Uht, load_plan  # noqa: PLC0415

    loaded = load_plan(path)
    plan = loaded.plan
    console = Console()
    console.print(
        f"[green]ok[/] {escape(str(path))}: plan [bold]{escape(plan.plan)}[/] "
        f"({escape(plan.jurisdiction)}), version {escape(str(loaded.version))}, "
        f"{len(plan.assets)} assets, {len(plan.rules)} rules"
    )
    table = Table(title="Rules", title_justify="left")
    for column in ("rule", "kind", "ccp", "asset/channel", "limit", "severity", "action"):
        table.add_column(column)
    for rule in plan.rules:
        if isinstance(rule, Htst):
            channel = rule.indicating
        elif isinstance(rule, Uht):
            channel = rule.outlet
        elif isinstance(rule, StorageAge):
            channel = ""
        else:
            channel = rule.channel
        channels = plan.assets[rule.asset].channels
        unit = channels[channel].unit if channel else "h"
        cells = (
            rule.id,
            rule.kind,
            rule.ccp or "",
            f"{rule.asset}/{channel}",
            rule.describe(unit),
            rule.severity,
            rule.action,
        )
        table.add_row(*(Text(str(cell)) for cell in cells))  # the plan's words, not markup
    console.print(table)
    return 0


def _stream_public_key(args: argparse.Namespace) -> int:
    from milkguard.settings import load_settings  # noqa: PLC0415
    from milkguard.signing import Signer  # noqa: PLC0415
    from stream.signed import stream_key_path  # noqa: PLC0415

    key = args.key or stream_key_path(load_settings(args.config))
    pem = Signer.load_or_create(key, setting="signing.key", extra="stream").public_pem()
    if args.output is None:
        sys.stdout.write(pem)
        return 0
    try:
        args.output.write_text(pem, encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot write the public key to {args.output}: {exc.strerror}") from exc
    return 0


def _schema(output: Path | None, *, records: bool = False) -> int:
    from milkguard.contract import json_schema  # noqa: PLC0415
    from milkguard.contract.records import records_schema  # noqa: PLC0415

    schema = records_schema() if records else json_schema()
    text = json.dumps(schema, indent=2, sort_keys=True) + "\n"
    if output is None:
        sys.stdout.write(text)
        return 0
    try:
        output.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot write the schema to {output}: {exc.strerror}") from exc
    return 0
