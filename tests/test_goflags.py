"""goflags.duration against Go's time.ParseDuration cases."""

from __future__ import annotations

import pytest

import goflags


@pytest.mark.parametrize("text,seconds", [
    ("0", 0.0), ("1h0m0s", 3600.0), ("90s", 90.0), ("1m30s", 90.0), ("250ms", 0.25), ("1.5h", 5400.0),
    (".5s", 0.5), ("1.s", 1.0), ("-1.5h", -5400.0), ("+3s", 3.0), ("10us", 1e-5), ("10µs", 1e-5),
    ("100ns", 1e-7), ("1h2m3s4ms", 3723.004),
])
def test_durations_as_go(text, seconds):
    assert goflags.duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text,message", [
    ("", 'time: invalid duration ""'), ("90", 'time: missing unit in duration "90"'),
    ("5 minutes", 'time: invalid duration "5 minutes"'), ("1d", 'time: invalid duration "1d"'),
    ("-", 'time: invalid duration "-"'), ("s", 'time: invalid duration "s"'),
])
def test_errors_as_go(text, message):
    with pytest.raises(ValueError) as err:
        goflags.duration(text)
    assert str(err.value) == message


def test_bare_seconds_where_a_flag_takes_them():
    assert goflags.duration("2.5", bare_seconds=True) == 2.5
    assert goflags.duration("2m", bare_seconds=True) == 120.0
