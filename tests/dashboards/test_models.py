"""The dashboards' JSON models without any server: uids, datasources, the grid, the SDK's own
models reading them back, and the files ``milkguard dashboards build`` writes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import dashboard as dm

from dashboards.boards import all_dashboards
from dashboards.build import build
from dashboards.influxql import DATASOURCE_UID
from milkguard_cli import main

#: The uids the alert service's page links to (alerts/grafana.py on the web app's side).
LINKED_UIDS = {
    "plant-overview",
    "farm-tank",
    "truck-load",
    "htst",
    "uht",
    "rooms-cans",
    "deviations",
}


def _datasource_uids(node: Any) -> set[str]:
    found: set[str] = set()
    if isinstance(node, dict):
        source = node.get("datasource")
        if isinstance(source, dict) and "uid" in source:
            found.add(source["uid"])
        for value in node.values():
            found |= _datasource_uids(value)
    elif isinstance(node, list):
        for value in node:
            found |= _datasource_uids(value)
    return found


def test_uids_are_unique_and_the_ones_the_alert_page_links_to() -> None:
    models = all_dashboards()
    assert {m["uid"] for m in models.values()} == LINKED_UIDS == set(models)
    for model in models.values():
        ids = [p["id"] for p in model["panels"]]
        assert len(ids) == len(set(ids)), model["uid"]
        names = [v["name"] for v in model["templating"]["list"]]
        assert names[:2] == ["site", "asset"], model["uid"]


def test_every_datasource_named_is_the_provisioned_one(tmp_path: Path) -> None:
    build(tmp_path, influx_url="http://influx:8086", database="milkguard")
    provisioned = yaml.safe_load(
        (tmp_path / "provisioning" / "datasources" / "milkguard.yaml").read_text()
    )
    (source,) = provisioned["datasources"]
    assert source["uid"] == DATASOURCE_UID
    assert source["type"] == "influxdb"
    assert source["jsonData"]["version"] == "InfluxQL"
    for model in all_dashboards().values():
        assert _datasource_uids(model) == {DATASOURCE_UID}, model["uid"]


def test_panels_do_not_overlap_and_stay_within_the_24_columns() -> None:
    for model in all_dashboards().values():
        cells: dict[tuple[int, int], str] = {}
        for panel in model["panels"]:
            grid = panel["gridPos"]
            assert grid["x"] >= 0, panel["title"]
            assert grid["x"] + grid["w"] <= 24, panel["title"]
            for x in range(grid["x"], grid["x"] + grid["w"]):
                for y in range(grid["y"], grid["y"] + grid["h"]):
                    assert (x, y) not in cells, f"{model['uid']}: {panel['title']} overlaps"
                    cells[(x, y)] = panel["title"]


def test_the_sdk_reads_each_dashboard_back_without_loss_but_influxdb_annotations() -> None:
    for model in all_dashboards().values():
        back = json.loads(json.dumps(dm.Dashboard.from_json(model), cls=JSONEncoder))
        annotations = model["annotations"]["list"]
        read = back.pop("annotations")["list"]
        assert back == {k: v for k, v in model.items() if k != "annotations"}
        # the SDK's annotation target holds only the built-in datasource's fields: what it
        # drops is exactly the InfluxDB query, which is why annotations are plain dicts
        for ours, theirs in zip(annotations, read, strict=True):
            assert {k: v for k, v in ours.items() if k != "target"} == {
                k: v for k, v in theirs.items() if k not in ("target", "builtIn")
            }
            assert "query" not in theirs["target"]
            assert "query" in ours["target"]


def test_build_command_writes_dashboards_and_provisioning(tmp_path: Path) -> None:
    assert main(["dashboards", "build", "--out", str(tmp_path)]) == 0
    written = sorted(p.name for p in (tmp_path / "dashboards").iterdir())
    assert written == sorted(f"{uid}.json" for uid in LINKED_UIDS)
    provider = yaml.safe_load(
        (tmp_path / "provisioning" / "dashboards" / "milkguard.yaml").read_text()
    )
    assert Path(provider["providers"][0]["options"]["path"]) == (tmp_path / "dashboards").resolve()
    htst = json.loads((tmp_path / "dashboards" / "htst.json").read_text())
    assert htst["title"] == "HTST recording chart"
