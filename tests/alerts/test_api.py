"""The alert API: tokens and roles. Unauthorized requests are refused, a regulator reads every
site and cannot write, an operator sees and acts on their own sites only; acknowledging and
recording a corrective action land in the audit trail."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from alerts.api import create_app
from alerts.audit import AuditTrail
from alerts.lifecycle import AlertBook
from alerts.settings import ApiUser
from alerts.signing import Signer
from tests.alerts.records import DEV1, change

T = 1_795_341_600_000
TOKENS = {
    "li": "operator-token-li-0123456789ab",
    "zhao": "operator-token-zhao-0123456789",
    "wang": "qa-token-wang-0123456789abcdef",
    "authority": "regulator-token-0123456789abcd",
}
HTST = "plant-01/htst-1/pmo-htst.temperature"


def users() -> list[ApiUser]:
    return [
        ApiUser(name="li", role="operator", token=TOKENS["li"], sites=["plant-01"]),
        ApiUser(name="zhao", role="operator", token=TOKENS["zhao"], sites=["plant-02"]),
        ApiUser(name="wang", role="qa", token=TOKENS["wang"]),
        ApiUser(name="authority", role="regulator", token=TOKENS["authority"], sites=["x"]),
    ]


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    trail = AuditTrail(tmp_path / "audit.db", Signer.load_or_create(tmp_path / "key.pem"))
    book = AlertBook(tmp_path / "alerts.db", trail=trail)
    book.on_deviation(change("opened"), T)
    reports = tmp_path / "reports"
    reports.mkdir()
    (reports / f"{DEV1}.json").write_text(
        '{"report": {"deviation": {"site": "plant-01"}}, "signature": {}}'
    )
    with TestClient(create_app(users(), book, trail, reports)) as test_client:
        yield test_client
    book.close()
    trail.close()


def as_(who: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[who]}"}


def test_requests_without_a_valid_token_are_refused(client: TestClient) -> None:
    assert client.get("/api/alerts").status_code == 401
    assert client.get("/api/alerts", headers={"Authorization": "Bearer guess"}).status_code == 401
    assert client.post("/api/acknowledge", json={"alert_id": HTST}).status_code == 401
    assert client.get(f"/api/reports/{DEV1}.json").status_code == 401


@pytest.mark.parametrize(
    "name", ["..%2Fkey.pem", "%2Fetc%2Fpasswd.json", "x.json", f"{DEV1}.pem", f"{DEV1}.json.json"]
)
def test_only_a_deviation_id_names_a_report(client: TestClient, name: str) -> None:
    assert client.get(f"/api/reports/{name}", headers=as_("authority")).status_code == 404


def test_a_regulator_reads_every_site_and_cannot_write(client: TestClient) -> None:
    assert [a["id"] for a in client.get("/api/alerts", headers=as_("authority")).json()] == [HTST]
    assert client.get(f"/api/reports/{DEV1}.json", headers=as_("authority")).status_code == 200

    ack = client.post("/api/acknowledge", json={"alert_id": HTST}, headers=as_("authority"))
    action = client.post(
        "/api/corrective-actions",
        json={"alert_id": HTST, "cause": "x" * 5, "action_taken": "y" * 5, "disposition": "hold"},
        headers=as_("authority"),
    )
    assert (ack.status_code, action.status_code) == (403, 403)
    assert client.get("/api/alerts", headers=as_("wang")).json()[0]["state"] == "raised"


def test_an_operator_sees_and_acts_on_their_own_sites_only(client: TestClient) -> None:
    assert client.get("/api/alerts", headers=as_("zhao")).json() == []
    assert client.get(f"/api/reports/{DEV1}.json", headers=as_("zhao")).status_code == 404
    assert client.get(f"/api/reports/{DEV1}.json", headers=as_("li")).status_code == 200
    refused = client.post("/api/acknowledge", json={"alert_id": HTST}, headers=as_("zhao"))
    assert refused.status_code == 403

    acked = client.post(
        "/api/acknowledge", json={"alert_id": HTST, "note": "on it"}, headers=as_("li")
    )
    assert acked.status_code == 200
    assert acked.json()["acknowledged_by"] == "li"


def test_a_corrective_action_is_signed_by_the_caller_and_in_the_trail(client: TestClient) -> None:
    given = {
        "alert_id": HTST,
        "cause": "steam valve stuck",
        "action_taken": "valve replaced",
        "disposition": "re-pasteurize",
        "lot": "L-17",
        "signed_by": "someone else",  # refused: the signer is whoever the token belongs to
    }
    assert (
        client.post("/api/corrective-actions", json=given, headers=as_("wang")).status_code == 422
    )

    del given["signed_by"]
    recorded = client.post("/api/corrective-actions", json=given, headers=as_("wang"))
    assert recorded.status_code == 200
    assert (recorded.json()["signed_by"], recorded.json()["role"]) == ("wang", "qa")
    detail = client.get("/api/alerts/detail", params={"id": HTST}, headers=as_("li")).json()
    assert [a["disposition"] for a in detail["actions"]] == ["re-pasteurize"]
    assert [e["kind"] for e in detail["trail"]] == ["alert.raised", "corrective_action.recorded"]


def test_a_bad_disposition_is_refused_naming_the_field(client: TestClient) -> None:
    given = {"alert_id": HTST, "cause": "probe", "action_taken": "fixed", "disposition": "sell"}

    refused = client.post("/api/corrective-actions", json=given, headers=as_("li"))

    assert refused.status_code == 422
    assert refused.json()["detail"][0]["loc"] == ["body", "disposition"]
