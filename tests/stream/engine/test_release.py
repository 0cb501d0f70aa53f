"""What a release looks at: channels that got readings, went idle, or hold readings ahead; and
how a gateway's batch is matched with its last layout."""

from __future__ import annotations

from milkguard.contract.v1 import Reading
from stream.engine import Engine
from stream.plan import parse_plan
from tests.stream.engine.scenario import at

TANKS = """
plan: tanks
jurisdiction: company
allowed_lateness_s: 2
assets:
  a:
    site: farm
    kind: bulk_tank
    channels:
      t: {unit: degC, interval_s: 1, silence_after_s: 600}
      u: {unit: degC, interval_s: 1, silence_after_s: 600}
  b:
    site: farm
    kind: bulk_tank
    channels:
      t: {unit: degC, interval_s: 1, silence_after_s: 600}
rules:
  - {id: a-max, kind: critical_limit, asset: a, channel: t, max: 6.0,
     severity: major, action: alert, source: test}
  - {id: b-max, kind: critical_limit, asset: b, channel: t, max: 6.0,
     severity: major, action: alert, source: test}
"""


def engine() -> Engine:
    return Engine(parse_plan(TANKS.encode(), "tanks.yaml"))


def test_a_channel_left_alone_releases_what_it_holds_once_it_is_idle() -> None:
    judge, out = engine(), []
    judge.submit("farm", "gw-a", [Reading("a", "t", 9.0, "degC", at(0))], at(0))
    judge.advance(at(0), out)
    # only the other tank is heard from after: tank a's breach must still be judged
    for second in range(1, 4):
        judge.submit("farm", "gw-b", [Reading("b", "t", 4.0, "degC", at(second))], at(second))
        judge.advance(at(second), out)

    assert [(c.kind, c.deviation.rule_id) for c in out] == [("opened", "a-max")]
    assert judge.held == 2  # tank b's last two seconds, within its allowed lateness


def test_readings_of_one_release_are_judged_in_time_order_whatever_their_arrival() -> None:
    judge, out = engine(), []
    judge.submit("farm", "gw-a", [Reading("a", "t", 9.0, "degC", at(2))], at(2))
    judge.submit("farm", "gw-a", [Reading("a", "t", 4.0, "degC", at(1))], at(2))
    judge.advance(at(10), out)

    assert [(c.kind, c.deviation.start_ms) for c in out] == [("opened", at(2))]
    assert judge.counters.late == 0


def test_a_batch_whose_ids_join_like_the_layout_is_routed_by_its_own_ids() -> None:
    judge, out = engine(), []
    judge.submit(
        "farm",
        "gw",
        [Reading("a", "t", 4.0, "degC", at(0)), Reading("a", "u", 4.0, "degC", at(0))],
        at(0),
    )
    # the same joined text, split otherwise: one reading of a channel the plan does not know
    routed = judge.submit("farm", "gw", [Reading("a\0a", "t\0u", 9.0, "degC\0degC", at(1))], at(1))  # type: ignore[arg-type]
    judge.advance(at(10), out)

    assert [r.asset for r in routed.unplanned] == ["a\0a"]
    assert out == []


def test_a_restored_engine_releases_what_was_held_at_the_snapshot() -> None:
    judge, out = engine(), []
    judge.submit("farm", "gw-a", [Reading("a", "t", 9.0, "degC", at(0))], at(0))
    judge.submit("farm", "gw-b", [Reading("b", "t", 9.0, "degC", at(0))], at(0))
    restored = Engine.restore(judge.plan, judge.snapshot())
    restored.advance(at(5), out)

    assert sorted(c.deviation.rule_id for c in out if c.kind == "opened") == ["a-max", "b-max"]
