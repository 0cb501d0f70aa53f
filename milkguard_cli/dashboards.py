"""``milkguard dashboards build | push | preview``: the Grafana dashboards as code."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

DEFAULT_PREVIEWS = Path("docs/dashboards")


def add_commands(commands: Any) -> None:
    """The ``dashboards`` command group."""
    group = commands.add_parser("dashboards", help="Grafana dashboards: build, push, preview")
    actions = group.add_subparsers(dest="dashboards_command", required=True, metavar="ACTION")

    build = actions.add_parser(
        "build",
        help="write the dashboards' JSON and Grafana's provisioning files",
        description="Write DIR/dashboards/<uid>.json and DIR/provisioning/{datasources,"
        "dashboards}/milkguard.yaml; point Grafana's provisioning path at DIR/provisioning.",
    )
    build.add_argument("--out", type=Path, default=Path("var/grafana"))
    build.add_argument("--influx-url", default="http://127.0.0.1:8086", help="for the datasource")
    build.add_argument("--database", default="milkguard", help="InfluxDB database (or DBRP)")
    build.set_defaults(handler=run_build)

    push = actions.add_parser(
        "push", help="create or update the dashboards in a running Grafana (HTTP API)"
    )
    push.add_argument("--url", required=True, help="Grafana's base URL, e.g. http://grafana:3000")
    push.add_argument("--token", required=True, help="a service account token with the Editor role")
    push.add_argument("--folder", default="MilkGuard")
    push.set_defaults(handler=run_push)

    preview = actions.add_parser(
        "preview",
        help="draw each dashboard as a PNG from its own queries (matplotlib)",
        description="Without --url: start a throwaway InfluxDB 1.x (Debian influxdb), load the "
        "simulated plant day through the stream's ingest, and draw every dashboard from it. "
        "With --url: draw from that InfluxDB over the last --hours.",
    )
    preview.add_argument("--out", type=Path, default=DEFAULT_PREVIEWS)
    preview.add_argument("--url", help="an InfluxDB serving InfluxQL on /query")
    preview.add_argument("--database", default="milkguard")
    preview.add_argument("--token", help="InfluxDB 2.x/3.x token (sent as 'Token ...')")
    preview.add_argument("--hours", type=float, default=24.0, help="with --url: the range")
    preview.set_defaults(handler=run_preview)


def run_build(args: argparse.Namespace) -> int:
    """``milkguard dashboards build``."""
    from dashboards.build import build  # noqa: PLC0415

    written = build(args.out, influx_url=args.influx_url, database=args.database)
    console = Console()
    for path in written:
        console.print(f"wrote {escape(str(path))}")
    return 0


def run_push(args: argparse.Namespace) -> int:
    """``milkguard dashboards push``."""
    from dashboards.build import push  # noqa: PLC0415

    pushed = push(args.url, args.token, folder_title=args.folder)
    Console().print(f"pushed {len(pushed)} dashboards to {escape(args.url)}: {', '.join(pushed)}")
    return 0


def run_preview(args: argparse.Namespace) -> int:
    """``milkguard dashboards preview``."""
    import time  # noqa: PLC0415

    from dashboards.boards import all_dashboards  # noqa: PLC0415
    from dashboards.influxql import InfluxDB, Window  # noqa: PLC0415
    from dashboards.preview import render  # noqa: PLC0415

    console = Console()
    if args.url:
        influx = InfluxDB(args.url, args.database, token=args.token)
        end = time.time_ns() // 1_000_000
        window = Window(end - round(args.hours * 3_600_000), end)
        for model in all_dashboards().values():
            console.print(f"wrote {escape(str(render(model, influx, window, args.out)))}")
        return 0
    from milkguard.influxd import start_influxd  # noqa: PLC0415
    from simulators.plantday import PREVIEW_HOURS, simulate_plant_day  # noqa: PLC0415

    day = simulate_plant_day()
    with tempfile.TemporaryDirectory(prefix="milkguard-influxd-") as directory:
        server = start_influxd(Path(directory), database=args.database)
        try:
            influx = InfluxDB(server.url, args.database)
            influx.write(day.lines)
            for uid, model in all_dashboards().items():
                first, last = PREVIEW_HOURS.get(uid, (0.0, 24.0))
                window = Window(
                    day.start_ms + round(first * 3_600_000), day.start_ms + round(last * 3_600_000)
                )
                console.print(f"wrote {escape(str(render(model, influx, window, args.out)))}")
        finally:
            server.stop()
    return 0
