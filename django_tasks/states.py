"""Task states, name for name as in ``celery.states``."""

PENDING = "PENDING"
RECEIVED = "RECEIVED"
STARTED = "STARTED"
SUCCESS = "SUCCESS"
FAILURE = "FAILURE"
REVOKED = "REVOKED"
RETRY = "RETRY"

#: States after which a task will not change again.
READY_STATES = frozenset({SUCCESS, FAILURE, REVOKED})
#: States of a task that has not finished yet.
UNREADY_STATES = frozenset({PENDING, RECEIVED, STARTED, RETRY})
#: States whose result is an exception instance.
EXCEPTION_STATES = frozenset({RETRY, FAILURE, REVOKED})
#: States whose exception ``get()`` re-raises.
PROPAGATE_STATES = frozenset({FAILURE, REVOKED})

ALL_STATES = frozenset({PENDING, RECEIVED, STARTED, SUCCESS, FAILURE, REVOKED, RETRY})
