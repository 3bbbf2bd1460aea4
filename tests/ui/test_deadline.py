"""--deadline: durations and absolute times."""

import datetime

import pytest

from foldrunner.ui.cli import seconds_until
from foldrunner.errors import UsageError

pytestmark = pytest.mark.timeout(10)

NOW = datetime.datetime(2026, 11, 23, 22, 0, 0)


@pytest.mark.parametrize(
    "text,expected",
    [
        ("6h", 6 * 3600),
        ("1h30m", 5400),
        ("90", 90),
        ("23:30", 5400),
        ("06:00", 8 * 3600),  # tomorrow morning
        ("2026-11-24T06:00", 8 * 3600),
    ],
)
def test_deadline_values(text, expected):
    assert seconds_until(text, NOW) == expected


@pytest.mark.parametrize("text", ["soon", "2026-11-22T06:00", "25:00", "-5m"])
def test_bad_deadlines_are_usage_errors(text):
    with pytest.raises(UsageError, match="--deadline"):
        seconds_until(text, NOW)
