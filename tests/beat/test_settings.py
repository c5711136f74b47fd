"""The scheduler's settings: Celery's names (old and namespaced too), checked when set."""

from __future__ import annotations

import pytest

from aqueue import App
from aqueue.beat import crontab
from aqueue.core.errors import ConfigurationError


class CeleryConfig:
    """The seed's Django-style settings."""

    CELERY_BROKER_URL = "memory://seed"
    CELERY_TIMEZONE = "Europe/Berlin"
    CELERY_BEAT_SCHEDULE = {
        "auto-sms-rating": {"task": "auto_sms_rating", "schedule": crontab(minute="*/10")}
    }


def test_the_seeds_beat_schedule_is_read_as_celery_reads_it() -> None:
    app = App("seedconf", broker="memory://seedconf")
    applied = app.config_from_object(CeleryConfig, namespace="CELERY")
    assert "beat_schedule" in applied and app.conf.timezone == "Europe/Berlin"
    assert app.conf.beat_schedule["auto-sms-rating"]["task"] == "auto_sms_rating"
    old = App("oldconf", broker="memory://oldconf")
    old.config_from_object(
        {"CELERYBEAT_SCHEDULE": {"x": {"task": "t", "schedule": 60}}, "CELERY_TIMEZONE": "UTC"}
    )
    assert set(old.conf.beat_schedule) == {"x"} and old.conf.timezone == "UTC"


@pytest.mark.parametrize(
    ("settings", "needle"),
    [
        ({"timezone": "Europe/Berlinn"}, "setting timezone: unknown time zone 'Europe/Berlinn'"),
        ({"timezone": 3}, "setting timezone must be a string"),
        ({"beat_schedule": [1]}, "setting beat_schedule must be a dict"),
        ({"beat_lease_seconds": 0}, "setting beat_lease_seconds must be positive"),
        ({"beat_max_loop_interval": -1}, "beat_max_loop_interval must be a number of seconds"),
        ({"beat_cron_starting_deadline": "soon"}, "beat_cron_starting_deadline must be"),
        ({"beat_schedul": {}}, "did you mean beat_schedule"),
    ],
)
def test_bad_beat_settings_are_one_line(settings: dict[str, object], needle: str) -> None:
    with pytest.raises(ConfigurationError, match=needle) as caught:
        App("badbeat", broker="memory://badbeat", **settings)
    assert "\n" not in str(caught.value)


def test_beat_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AQUEUE_TIMEZONE", "America/New_York")
    monkeypatch.setenv("AQUEUE_BEAT_LEASE_SECONDS", "3")
    app = App("envbeat", broker="memory://envbeat")
    assert (app.conf.timezone, app.conf.beat_lease_seconds) == ("America/New_York", 3.0)
    monkeypatch.setenv("AQUEUE_BEAT_SCHEDULE", "{}")
    with pytest.raises(ConfigurationError, match="cannot be set from the environment"):
        App("envbeat2", broker="memory://envbeat2")
