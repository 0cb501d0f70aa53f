"""``milkguard bridge | worker | replay | stream public-key``: the stream beyond ``run``."""

from __future__ import annotations

import argparse
import logging
import math
import sys
from pathlib import Path
from typing import Any

from rich.console import Console

from milkguard import logs
from milkguard.errors import ConfigError
from milkguard_cli.common import output, stop_on_signals


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


def add_runtime_commands(commands: Any) -> None:
    """The ``bridge``, ``worker`` and ``replay`` commands."""
    bridge = commands.add_parser(
        "bridge",
        help="MQTT to Kafka: every gateway batch, at least once, in order per gateway",
        description="Subscribe to every gateway's batches on the MQTT broker (mqtt.*) and produce "
        "them to Kafka (kafka.*), keyed by site; each is acknowledged to MQTT only once "
        "Kafka has it. Settings from --config and MILKGUARD_* variables.",
    )
    bridge.add_argument("--config", type=Path, help="settings file (YAML)")
    bridge.set_defaults(handler=run_bridge)

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
    worker.set_defaults(handler=run_worker)

    replay = commands.add_parser(
        "replay",
        help="judge an archive of `milkguard run`, or recorded wire payloads (JSON lines), and "
        "write deviations as JSON lines",
        description="Judge an archive written by `milkguard run` (archive.*: a directory or "
        "one of its files, gzipped or not), which gives the deviation changes the live service "
        "gave; or recorded wire-contract payloads, one per line ('-' for standard input), "
        "judged on a clock taken from the data. Write every deviation change as one JSON "
        "object per line.",
    )
    replay.add_argument(
        "file",
        help="an archive directory or file, JSON lines of v1 payloads, or - for standard input",
    )
    replay.add_argument(
        "--format",
        choices=("auto", "archive", "payloads"),
        default="auto",
        help="what the input is; auto: an archive when it is a directory or its first line "
        "is an archive header, else payload lines",
    )
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
    replay.add_argument(
        "--checkpoint",
        type=Path,
        metavar="PATH",
        help="save progress to PATH every 10,000 lines; run again with the same PATH after a "
        "crash to carry on where it stopped (needs a file, not -, and --output)",
    )
    replay.set_defaults(handler=run_replay)


def add_key_commands(commands: Any) -> None:
    """The ``stream`` command group: the stream's signing key."""
    stream = commands.add_parser("stream", help="the stream's signing key")
    stream.set_defaults(handler=public_key)
    stream_commands = stream.add_subparsers(dest="stream_command", required=True, metavar="WHAT")
    public = stream_commands.add_parser(
        "public-key",
        help="the public key that checks the stream's signed deviations (alerts.stream_keys); "
        "the signing key is created if there is none",
    )
    public.add_argument("--config", type=Path, help="settings file (YAML): signing.key, data_dir")
    public.add_argument("--key", type=Path, help="the private key (default: from the settings)")
    public.add_argument("--output", type=Path, help="write the PEM here (default: stdout)")


def run_bridge(args: argparse.Namespace) -> int:
    """``milkguard bridge``."""
    from contextlib import ExitStack  # noqa: PLC0415

    from milkguard.settings import broker_address  # noqa: PLC0415
    from milkguard_cli.settings import load_settings  # noqa: PLC0415
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


def run_worker(args: argparse.Namespace) -> int:
    """``milkguard worker``."""
    from milkguard_cli.settings import load_settings  # noqa: PLC0415
    from stream.worker import build_worker  # noqa: PLC0415
    from stream.worker import run_worker as run_faust_worker  # noqa: PLC0415

    overrides: dict[str, object] = {}
    if args.plan is not None:
        overrides["plan"] = args.plan
    settings = load_settings(args.config, **overrides)
    logs.configure(settings.log_level, settings.log_format)
    logging.getLogger("milkguard").info("settings", extra={"settings": settings.redacted()})
    return run_faust_worker(build_worker(settings))


def run_replay(args: argparse.Namespace) -> int:
    """``milkguard replay``."""
    from stream.plan import load_plan  # noqa: PLC0415
    from stream.replay import open_source, replay  # noqa: PLC0415

    logs.configure("WARNING")
    loaded = load_plan(args.plan)
    if args.format == "archive" or (args.format == "auto" and _is_archive(args.file)):
        return _replay_archive(args, loaded)
    try:
        source, name, size = open_source(args.file)
    except OSError as exc:
        raise ConfigError(f"cannot read {args.file}: {exc.strerror}") from exc
    tolerance_ms = round(args.future_tolerance_h * 3_600_000)
    if args.checkpoint is not None:
        from stream.replay import check_resumable, replay_resumable  # noqa: PLC0415

        source.close()
        recording, into = check_resumable(args.file, args.output, args.checkpoint)
        # not opened through output(): "w" would erase what the checkpoint counts on
        summary = replay_resumable(
            loaded,
            recording,
            into,
            args.checkpoint,
            deadletter=args.deadletter,
            timeseries=args.timeseries,
            future_tolerance_ms=tolerance_ms,
        )
    else:
        with source, output(args.output) as out:
            summary = replay(
                loaded,
                source,
                out,
                name=name,
                deadletter=args.deadletter,
                timeseries=args.timeseries,
                progress_total=size,
                future_tolerance_ms=tolerance_ms,
            )
    _print_summary(summary)
    return 0


def _is_archive(file: str) -> bool:
    from stream.replay import is_archive  # noqa: PLC0415

    if file == "-":
        return False  # an archive is replayed from its files (they may be gzipped, and several)
    try:
        return is_archive(Path(file))
    except OSError as exc:
        raise ConfigError(f"cannot read {file}: {exc.strerror}") from exc


def _replay_archive(args: argparse.Namespace, loaded: Any) -> int:
    """``milkguard replay`` of an archive: its receive times, ticks and restarts, as live."""
    from stream.replay import archive_inputs, replay_archive  # noqa: PLC0415

    if args.file == "-":
        raise ConfigError(
            "an archive is replayed from its directory or files, not standard input: "
            "name the archive directory (archive.dir, default data_dir/archive)"
        )
    if args.checkpoint is not None:
        raise ConfigError(
            f"--checkpoint {args.checkpoint} resumes replays of payload lines only; replay the "
            "archive without it (a day's archive replays in minutes)"
        )
    try:
        files = archive_inputs(Path(args.file))
        with output(args.output) as out:
            summary = replay_archive(
                loaded, files, out, deadletter=args.deadletter, timeseries=args.timeseries
            )
    except OSError as exc:
        raise ConfigError(f"cannot read {args.file}: {exc.strerror or exc}") from exc
    _print_summary(summary)
    return 0


def _print_summary(summary: Any) -> None:
    err = Console(stderr=True)
    for note in summary.notes:
        err.print(f"note: {note}", highlight=False, markup=False, soft_wrap=True)
    err.print(
        f"replayed {summary.lines:,} lines: {summary.batches:,} batches, "
        f"{summary.readings:,} readings, {summary.deviation_changes:,} deviation changes, "
        f"{summary.rejected:,} rejected, {summary.duplicates:,} duplicate batches, "
        f"{summary.late:,} late readings ({summary.late_beyond_bound:,} beyond late_judge_s, "
        "not judged)",
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


def public_key(args: argparse.Namespace) -> int:
    """``milkguard stream public-key``."""
    from milkguard.signing import Signer  # noqa: PLC0415
    from milkguard_cli.settings import load_settings  # noqa: PLC0415
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
