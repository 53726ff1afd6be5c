"""The store: the only code that writes task rows and their history.

Everything above it (transports, the calling API, the worker, the admin and the API) reads
and writes tasks through these functions, as procrastinate's ``JobManager`` is the only door
to its jobs:

* :mod:`.changes`: state changes, batched, each with its history row;
* :mod:`.tasks`: sending (the ``INSERT``), revoke, forget, purge, bad-message rows;
* :mod:`.leases`: claims, renewals, give-backs, the lost-worker rule, expiry, the relay's rows;
* :mod:`.notify`: ``LISTEN``/``NOTIFY`` channels and the waiters that share them;
* :mod:`.canvas`: groups as sent, and chords counted in their header's outcome writes;
* :mod:`.schedules`: periodic task entries, advanced once per due time;
* :mod:`.rates`: rate-limit buckets and the tasks waiting for their reserved start;
* :mod:`.sql`: the hand-written statements of the hot paths.
"""

from .canvas import (
    chord_state,
    create_group,
    forget_group,
    group_task_ids,
    purge_groups,
    revoke_chord_body,
    set_chord_handlers,
)
from .changes import (
    StateChange,
    failure_change,
    record_states,
    revoked_change,
    store_custom_state,
    task_label,
)
from .leases import (
    RESERVED_START,
    AcksLatePolicy,
    Claim,
    ClaimedTask,
    claim,
    give_back,
    give_back_unstarted,
    has_due_rows,
    publish_due,
    recover_lost,
    renew,
    revoke_expired,
    revoked_among,
    seconds_until_due,
    terminate_requests,
)
from .rates import take_starts, turn_of, wait_for_turn
from .schedules import (
    CodeEntry,
    advance,
    entries_due_by,
    record_manual_run,
    record_send_error,
    reschedule,
    sync_code_entries,
)
from .status import finished_by_name, oldest_due, recent_runtimes, worker_rows
from .tasks import (
    NewTask,
    existing_task_ids,
    finished_before,
    forget,
    insert_task,
    insert_tasks,
    link_rerun,
    mark_dispatched,
    mark_unsent,
    purge_finished,
    queues_with_overdue_messages,
    record_bad_message,
    redispatch_waiting,
    revoke,
)
from .workers import heartbeat_worker, purge_workers, register_worker, running_tasks

__all__ = [
    "RESERVED_START",
    "AcksLatePolicy",
    "Claim",
    "ClaimedTask",
    "CodeEntry",
    "NewTask",
    "StateChange",
    "advance",
    "chord_state",
    "claim",
    "create_group",
    "entries_due_by",
    "existing_task_ids",
    "failure_change",
    "finished_before",
    "finished_by_name",
    "forget",
    "forget_group",
    "give_back",
    "give_back_unstarted",
    "group_task_ids",
    "has_due_rows",
    "heartbeat_worker",
    "insert_task",
    "insert_tasks",
    "link_rerun",
    "mark_dispatched",
    "mark_unsent",
    "oldest_due",
    "publish_due",
    "purge_finished",
    "purge_groups",
    "purge_workers",
    "queues_with_overdue_messages",
    "recent_runtimes",
    "record_bad_message",
    "record_manual_run",
    "record_send_error",
    "record_states",
    "recover_lost",
    "redispatch_waiting",
    "register_worker",
    "renew",
    "reschedule",
    "revoke",
    "revoke_chord_body",
    "revoke_expired",
    "revoked_among",
    "revoked_change",
    "running_tasks",
    "seconds_until_due",
    "set_chord_handlers",
    "store_custom_state",
    "sync_code_entries",
    "take_starts",
    "task_label",
    "terminate_requests",
    "turn_of",
    "wait_for_turn",
    "worker_rows",
]
