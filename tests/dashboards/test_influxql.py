"""Grafana's macros and variables expanded as Grafana sends them to InfluxDB."""

from __future__ import annotations

import pytest

from dashboards.influxql import ALL, InfluxQLError, Window, expand, interval_text, regex_value

DAY_MS = 1_795_305_600_000  # 2026-11-22T00:00Z


def test_time_filter_and_interval_follow_the_range_over_the_panels_points() -> None:
    window = Window(DAY_MS, DAY_MS + 3_600_000)  # one hour over 1,000 points: 3.6 s -> 5 s
    text = expand(
        "SELECT mean(v) FROM r WHERE $timeFilter GROUP BY time($__interval) -- $__interval_ms",
        window,
        {},
    )
    assert text == (
        f"SELECT mean(v) FROM r WHERE time >= {DAY_MS}ms and time <= {DAY_MS + 3_600_000}ms "  # noqa: S608
        "GROUP BY time(5s) -- 5000"
    )
    assert Window(DAY_MS, DAY_MS + 24 * 3_600_000).interval_ms == 120_000  # a day: 2 min
    assert Window(DAY_MS, DAY_MS + 60_000).interval_ms == 1_000  # never below the minimum
    assert [interval_text(ms) for ms in (500, 30_000, 300_000, 7_200_000)] == [
        "500ms",
        "30s",
        "5m",
        "2h",
    ]


def test_variables_become_regex_alternatives_with_special_characters_escaped() -> None:
    assert regex_value(["plant-01"]) == r"plant\-01"
    assert regex_value(["farm-01", "farm.02"]) == r"(farm\-01|farm\.02)"
    assert regex_value([ALL]) == ".*"
    text = expand(
        'WHERE "site" =~ /^$site$/ AND "a" =~ /^${asset}$/',
        Window(0, 1),
        {
            "site": ["a", "b"],
            "asset": ["tank-1"],
        },
    )
    assert text == r'WHERE "site" =~ /^(a|b)$/ AND "a" =~ /^tank\-1$/'


def test_a_variable_left_unfilled_is_named_before_the_query_reaches_influxdb() -> None:
    with pytest.raises(InfluxQLError, match="channel"):
        expand('WHERE "channel" =~ /^$channel$/', Window(0, 1), {"site": ["a"]})
