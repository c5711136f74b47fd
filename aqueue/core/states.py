"""Task states, with Celery's names and precedence."""

from __future__ import annotations

PENDING = "PENDING"
RECEIVED = "RECEIVED"
STARTED = "STARTED"
RETRY = "RETRY"
SUCCESS = "SUCCESS"
FAILURE = "FAILURE"
REVOKED = "REVOKED"

#: States after which a task will not change again.
READY_STATES = frozenset({SUCCESS, FAILURE, REVOKED})
#: States in which a task has not finished.
UNREADY_STATES = frozenset({PENDING, RECEIVED, STARTED, RETRY})
EXCEPTION_STATES = frozenset({RETRY, FAILURE, REVOKED})
PROPAGATE_STATES = frozenset({FAILURE, REVOKED})

_PRECEDENCE = [SUCCESS, FAILURE, REVOKED, STARTED, RECEIVED, RETRY, PENDING]
_UNKNOWN = _PRECEDENCE.index(RETRY)  # custom states (PROGRESS, ...) rank just above PENDING


def precedence(state: str) -> int:
    """Celery's precedence: a lower number wins. Custom states rank with RETRY."""
    try:
        return _PRECEDENCE.index(state)
    except ValueError:
        return _UNKNOWN


def supersedes(new_attempt: int, stored_attempt: int, stored_state: str) -> bool:
    """The fencing rule every result backend applies atomically on write.

    A write from ``new_attempt`` replaces the stored record unless the stored one comes from
    a later attempt, or from the same attempt and is already final. So a worker that resumes
    after its lease was taken over cannot overwrite the newer attempt's result, and a late
    STARTED cannot hide a SUCCESS.
    """
    if new_attempt != stored_attempt:
        return new_attempt > stored_attempt
    return stored_state not in READY_STATES
