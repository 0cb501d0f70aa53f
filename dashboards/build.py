"""Writing the dashboards and Grafana's provisioning files, and pushing them to a Grafana.

``milkguard dashboards build --out DIR`` writes::

    DIR/dashboards/<uid>.json                 one JSON model per dashboard
    DIR/provisioning/datasources/milkguard.yaml   the InfluxDB datasource (fixed uid, InfluxQL)
    DIR/provisioning/dashboards/milkguard.yaml    a provider loading DIR/dashboards

so ``GF_PATHS_PROVISIONING=DIR/provisioning`` (and the provider's path) is all Grafana needs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from dashboards.boards import all_dashboards
from dashboards.influxql import DATASOURCE_UID
from milkguard.errors import MilkGuardError

#: The Grafana folder the dashboards are provisioned into.
FOLDER = "MilkGuard"


def datasource_provisioning(url: str, database: str) -> dict[str, Any]:
    """The datasource file: InfluxDB speaking InfluxQL, with the uid every panel names.

    For InfluxDB 2.x or 3.x keep InfluxQL and add the header ``Authorization: Token ...``
    (``jsonData.httpHeaderName1`` / ``secureJsonData.httpHeaderValue1``) and, on 2.x, a DBRP
    mapping of the database to the bucket.
    """
    return {
        "apiVersion": 1,
        "datasources": [
            {
                "name": "MilkGuard InfluxDB",
                "uid": DATASOURCE_UID,
                "type": "influxdb",
                "access": "proxy",
                "url": url,
                "database": database,
                "isDefault": True,
                "editable": False,
                "jsonData": {"version": "InfluxQL", "httpMode": "POST", "timeInterval": "1s"},
            }
        ],
    }


def dashboard_provider(dashboards_dir: Path) -> dict[str, Any]:
    """The provider file: load every JSON model of ``dashboards_dir`` into one folder."""
    return {
        "apiVersion": 1,
        "providers": [
            {
                "name": "milkguard",
                "folder": FOLDER,
                "type": "file",
                "disableDeletion": False,
                "allowUiUpdates": False,
                "updateIntervalSeconds": 60,
                "options": {"path": str(dashboards_dir), "foldersFromFilesStructure": False},
            }
        ],
    }


def build(out: Path, *, influx_url: str, database: str) -> list[Path]:
    """Write every dashboard and both provisioning files under ``out``; the files written."""
    try:
        boards_dir = out / "dashboards"
        datasources = out / "provisioning" / "datasources"
        providers = out / "provisioning" / "dashboards"
        for folder in (boards_dir, datasources, providers):
            folder.mkdir(parents=True, exist_ok=True)
        written: list[Path] = []
        for uid, model in all_dashboards().items():
            path = boards_dir / f"{uid}.json"
            path.write_text(json.dumps(model, indent=2, sort_keys=True) + "\n", encoding="utf-8")
            written.append(path)
        for path, content in (
            (datasources / "milkguard.yaml", datasource_provisioning(influx_url, database)),
            (providers / "milkguard.yaml", dashboard_provider(boards_dir.resolve())),
        ):
            path.write_text(yaml.safe_dump(content, sort_keys=False), encoding="utf-8")
            written.append(path)
    except OSError as exc:
        raise MilkGuardError(
            f"cannot write the dashboards under {out}: {exc.strerror}; choose a writable "
            "directory with --out"
        ) from exc
    return written


def push(url: str, token: str, *, folder_title: str = FOLDER) -> list[str]:
    """Create or update every dashboard in a running Grafana (HTTP API, a service account
    token with the Editor role) in the folder ``folder_title``; the uids pushed."""
    from grafana_client import GrafanaApi  # noqa: PLC0415 - only this command needs it
    from grafana_client.client import GrafanaException  # noqa: PLC0415

    api = GrafanaApi.from_url(url, credential=token)
    try:
        folders = api.folder.get_all_folders()
        found = [f for f in folders if f.get("title") == folder_title]
        folder_uid = found[0]["uid"] if found else api.folder.create_folder(folder_title)["uid"]
        pushed: list[str] = []
        for uid, model in all_dashboards().items():
            api.dashboard.update_dashboard(
                {
                    "dashboard": model,
                    "folderUid": folder_uid,
                    "overwrite": True,
                    "message": "milkguard dashboards push",
                }
            )
            pushed.append(uid)
    except GrafanaException as exc:
        raise MilkGuardError(
            f"Grafana at {url} refused the dashboards: {exc.status_code} {exc.message}; check "
            "the URL and that the token is a service account token with the Editor role"
        ) from exc
    except OSError as exc:
        raise MilkGuardError(f"cannot reach Grafana at {url}: {exc}") from exc
    return pushed
