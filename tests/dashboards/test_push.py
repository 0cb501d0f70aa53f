"""``milkguard dashboards push`` against a tiny local HTTP server that speaks the three Grafana
API endpoints the push uses. This is a unit-level fake, not Grafana (no Grafana server can be
installed here): it checks what the command sends, the token, and how a refusal reads."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from dashboards.boards import all_dashboards
from milkguard_cli import main

TOKEN = "glsa_test-token"


class FakeGrafana(ThreadingHTTPServer):
    """GET/POST /api/folders and POST /api/dashboards/db, as Grafana 10/11 answers them."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.folders: list[dict[str, Any]] = []
        self.dashboards: list[dict[str, Any]] = []
        self.refuse_with: int | None = None


class _Handler(BaseHTTPRequestHandler):
    server: FakeGrafana

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""

    def _answer(self, status: int, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _authorised(self) -> bool:
        if self.headers.get("Authorization") != f"Bearer {TOKEN}":
            self._answer(401, {"message": "invalid API key"})
            return False
        return True

    def do_GET(self) -> None:
        """The folders."""
        if self._authorised() and self.path.startswith("/api/folders"):
            self._answer(200, self.server.folders)

    def do_POST(self) -> None:
        """A folder or a dashboard."""
        if not self._authorised():
            return
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.server.refuse_with is not None:
            self._answer(self.server.refuse_with, {"message": "Access denied"})
        elif self.path == "/api/folders":
            folder = {"uid": "f-1", "title": body["title"], "id": 1}
            self.server.folders.append(folder)
            self._answer(200, folder)
        elif self.path == "/api/dashboards/db":
            self.server.dashboards.append(body)
            uid = body["dashboard"]["uid"]
            self._answer(200, {"status": "success", "uid": uid, "url": f"/d/{uid}"})
        else:
            self._answer(404, {"message": "not found"})


@pytest.fixture
def grafana() -> Iterator[FakeGrafana]:
    server = FakeGrafana()
    thread = threading.Thread(target=server.serve_forever, name="fake-grafana", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def _url(server: FakeGrafana) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}"


def test_push_creates_the_folder_and_every_dashboard_with_the_token(grafana: FakeGrafana) -> None:
    assert main(["dashboards", "push", "--url", _url(grafana), "--token", TOKEN]) == 0
    assert [f["title"] for f in grafana.folders] == ["MilkGuard"]
    pushed = {body["dashboard"]["uid"]: body for body in grafana.dashboards}
    assert pushed.keys() == all_dashboards().keys()
    for uid, body in pushed.items():
        assert body["folderUid"] == "f-1"
        assert body["overwrite"] is True
        assert body["dashboard"] == all_dashboards()[uid]


def test_push_again_reuses_the_folder(grafana: FakeGrafana) -> None:
    for _ in range(2):
        assert main(["dashboards", "push", "--url", _url(grafana), "--token", TOKEN]) == 0
    assert len(grafana.folders) == 1
    assert len(grafana.dashboards) == 2 * len(all_dashboards())


def test_a_refusal_names_grafana_and_what_to_check(
    grafana: FakeGrafana, capsys: pytest.CaptureFixture[str]
) -> None:
    grafana.refuse_with = 403
    assert main(["dashboards", "push", "--url", _url(grafana), "--token", TOKEN]) == 2
    err = capsys.readouterr().err
    assert "refused the dashboards: 403" in err
    assert "Editor role" in err
