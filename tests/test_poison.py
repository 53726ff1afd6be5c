"""Poison: property tests (hypothesis) of what a worker does with garbage.

* Messages published raw to the broker, as another program might: garbage bodies, headers
  (random dicts, ids that are not strings, NUL characters, lone surrogates, huge strings,
  deep nesting), content types, content encodings and compression headers.
* Task rows whose options, arguments, body and content type were overwritten with garbage.

The properties, for every example: the worker's loop (``run_until_empty()``) never raises; a
good task sent alongside succeeds; a bad message or row with a readable id is recorded
``FAILURE`` with a reason (and never runs); nothing is left in the broker unacknowledged;
no row is left waiting or leased.

The message tests need a broker (``DJANGO_TASKS_BROKER_URL``); the row tests run on every
transport. Each property's examples are bounded so that the file runs in well under a minute
per transport; ``POISON_EXAMPLES=<factor>`` multiplies them for a longer hunt.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import threading
import time
import uuid
import zlib
from dataclasses import dataclass, field
from typing import Any

import pytest
from django.db import DatabaseError, connection, transaction
from hypothesis import HealthCheck, assume, event, example, given, note, reject, settings
from hypothesis import strategies as st
from kombu import Connection, Producer

from django_tasks import states
from django_tasks.messages import storable_text
from django_tasks.models import TaskResult
from django_tasks.testing import run_until_empty
from django_tasks.transports import get_transport
from tests.conftest import broker_url, on_broker
from tests.taskapp import tasks
from tests.taskapp.models import Run

pytestmark = pytest.mark.django_db(transaction=True)

FACTOR = float(os.environ.get("POISON_EXAMPLES", "1"))
QUEUE = "default"
GOOD_NAME = "tests.taskapp.tasks.record"
READY = set(states.READY_STATES)


def bounded(examples: int) -> settings:
    return settings(
        max_examples=max(1, int(examples * FACTOR)),
        deadline=None,
        database=None,  # no .hypothesis/ in the repository; failures print their example
        suppress_health_check=[
            HealthCheck.function_scoped_fixture,
            HealthCheck.too_slow,
            HealthCheck.filter_too_much,
            HealthCheck.data_too_large,
            HealthCheck.large_base_example,
        ],
    )


# -- strategies ---------------------------------------------------------------------------------

NUL = st.just("\x00")
SURROGATE = st.integers(0xD800, 0xDFFF).map(chr)
#: Text with, now and then, what no database stores: NUL characters and lone surrogates.
NASTY_TEXT = st.one_of(
    st.text(max_size=20),
    st.lists(st.one_of(st.characters(), NUL, SURROGATE), max_size=20).map("".join),
    st.integers(256, 5000).map(lambda n: "x" * n),  # longer than any column
    st.integers(100_000, 300_000).map(lambda n: "\u00e9" * n),  # huge (more than a frame)
)
#: Text every database stores.
CLEAN_TEXT = st.text(st.characters(exclude_characters="\x00"), max_size=20)
#: Header names: mostly ones AMQP can carry (a table key is at most 255 bytes of UTF-8).
HEADER_NAMES = st.one_of(CLEAN_TEXT, CLEAN_TEXT, CLEAN_TEXT, NASTY_TEXT)


def deep(depth: int, leaf: Any = 1) -> Any:
    value = leaf
    for i in range(depth):
        value = [value] if i % 2 else {"k": value}
    return value


def json_values(text: st.SearchStrategy[str], *, wide_ints: bool = True) -> st.SearchStrategy[Any]:
    integers = st.integers() if wide_ints else st.integers(-(2**63), 2**63 - 1)
    scalars = st.one_of(
        st.none(),
        st.booleans(),
        integers,
        # Wider than a bigint (or than an AMQP table's integers, which refuse them).
        st.integers(min_value=2**63, max_value=2**70) if wide_ints else integers,
        st.floats(allow_nan=False, allow_infinity=False),
        text,
    )
    nested = st.recursive(
        scalars,
        lambda kids: st.lists(kids, max_size=4) | st.dictionaries(text, kids, max_size=4),
        max_leaves=12,
    )
    return st.one_of(nested, st.integers(50, 900).map(deep))


JSON = json_values(NASTY_TEXT)
#: Header values: mostly integers an AMQP table can carry, so that most examples get through.
HEADER_VALUES = st.one_of(json_values(NASTY_TEXT, wide_ints=False), JSON)
CLEAN_JSON = json_values(CLEAN_TEXT)
#: Row values: mostly what every database stores, now and then what only SQLite does (NUL
#: characters); PostgreSQL refuses those, and the example is dropped.
ROW_JSON = st.one_of(CLEAN_JSON, CLEAN_JSON, CLEAN_JSON, JSON)


# -- messages published raw ---------------------------------------------------------------------


@dataclass
class RawMessage:
    body: bytes
    headers: dict[str, Any]
    content_type: str
    content_encoding: str
    #: Why no worker can run it (None: a well-formed message, of a task that has no row).
    defect: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def readable_id(self) -> str | None:
        """The id the bad message is recorded under, if it has one."""
        raw = self.headers.get("id")
        return storable_text(raw)[:255] if isinstance(raw, str) and raw else None


GOOD_BODY = b'[["from another program"], {}]'
CONTENT_TYPES = [
    "application/x-python-serialize",
    "application/x-msgpack",
    "application/x-yaml",
    "application/data",
    "text/plain",
    "",
]
COMPRESSIONS = [
    "application/x-gzip",
    "application/x-bz2",
    "application/x-lzma",
    "application/zstd",
    "application/x-brotli",
    "zlib",
    "no-such-compression",
]


def is_args_kwargs(body: bytes) -> bool:
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return False
    return (
        isinstance(value, list)
        and len(value) >= 2
        and isinstance(value[0], list)
        and isinstance(value[1], dict)
    )


DEFECTS = [None, "id", "task", "content_type", "compression", "body"]


@st.composite
def raw_messages(draw: st.DrawFn, defect: str | None) -> RawMessage:
    """A message with ``defect`` (None: well-formed, for a task that has no row), and random
    extra headers."""
    task_id: Any = str(uuid.uuid4())
    if defect == "id":
        task_id = draw(
            st.one_of(
                NASTY_TEXT.filter(lambda t: not t or len(t) > 255 or "\x00" in t or not _utf8(t)),
                st.one_of(st.none(), st.integers(), st.floats(), st.booleans()),
                st.lists(CLEAN_TEXT, max_size=3),
                st.dictionaries(CLEAN_TEXT, CLEAN_TEXT, max_size=3),
                st.just(""),
            )
        )
    name: Any = GOOD_NAME
    if defect == "task":
        name = draw(
            st.one_of(
                st.just("tests.taskapp.tasks.no_such_task"),
                NASTY_TEXT.filter(lambda t: t != GOOD_NAME),
                st.one_of(st.none(), st.integers(), st.lists(st.integers(), max_size=3)),
            )
        )
    headers: dict[str, Any] = {}
    if draw(st.integers(0, 9)) or defect != "id":  # the id header is missing now and then
        headers["id"] = task_id
    if draw(st.integers(0, 9)) or defect != "task":
        headers["task"] = name
    extra = draw(st.dictionaries(HEADER_NAMES, HEADER_VALUES, max_size=3))
    for key in ("id", "task", "compression"):
        extra.pop(key, None)
    headers.update(extra)

    body = GOOD_BODY
    content_type, content_encoding = "application/json", draw(st.sampled_from(["utf-8", "binary"]))
    if defect == "content_type":
        content_type = draw(st.sampled_from(CONTENT_TYPES) | CLEAN_TEXT)
        assume(content_type != "application/json")
    if defect == "compression":
        # A header naming a compression the body is not compressed with, or none at all.
        headers["compression"] = draw(
            st.sampled_from(COMPRESSIONS) | NASTY_TEXT.filter(bool) | st.integers()
        )
    elif draw(st.booleans()) and defect is None:
        headers["compression"] = "application/x-gzip"
        body = zlib.compress(GOOD_BODY)  # kombu's gzip is zlib
    if defect == "body":
        body = draw(
            st.one_of(
                st.binary(max_size=200),
                JSON.map(lambda v: _dumps(v).encode("utf-8", "surrogatepass")),
                st.integers(0, 3000).map(lambda d: b"[" * d + b"]" * d),
                st.integers(100_000, 1_000_000).map(lambda n: b"[" + b"1," * n + b"1]"),
            ).filter(lambda b: not is_args_kwargs(b))
        )
    return RawMessage(body, headers, content_type, content_encoding, defect, extra)


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _dumps(value: Any) -> str:
    try:
        return json.dumps(value)
    except (ValueError, RecursionError):
        return "not json"


def publish(message: RawMessage) -> None:
    """Publish as another program might, bypassing ``apply_async``."""
    queue = get_transport().kombu_queue(QUEUE)
    # Publisher confirms (AMQP): a message the broker refuses (a header frame larger than
    # frame_max closes the connection) raises here instead of vanishing.
    with Connection(broker_url(), transport_options={"confirm_publish": True}) as conn:
        Producer(conn.channel()).publish(
            message.body,
            exchange=queue.exchange,
            routing_key=QUEUE,
            declare=[queue],
            headers=message.headers,
            content_type=message.content_type,
            content_encoding=message.content_encoding,
            serializer=None,
        )


def left_in_broker() -> dict[str, int]:
    """Messages still in the broker for our queue: ready ones, and (Redis) unacknowledged
    ones held for redelivery."""
    left = {}
    with Connection(broker_url()) as conn:
        channel = conn.channel()
        try:
            left["ready"] = channel.queue_declare(queue=QUEUE, passive=True).message_count
        except conn.channel_errors:
            left["ready"] = 0  # Redis: an empty list does not exist
        if conn.transport.driver_type == "redis":
            left["unacked"] = channel.client.hlen(channel.unacked_key)
    return {k: v for k, v in left.items() if v}


def purge() -> None:
    with Connection(broker_url()) as conn:
        channel = conn.channel()
        get_transport().kombu_queue(QUEUE)(channel).declare()
        channel.queue_purge(QUEUE)
        if conn.transport.driver_type == "redis":
            channel.client.delete(channel.unacked_key, channel.unacked_index_key)


class WorkerLoopRaised(Exception):
    """``run_until_empty()`` raised: a worker's consumer loop would have crashed."""


def run_worker() -> int:
    """The worker's own loop, in burst mode, here; whatever escapes it is a finding.

    A burst ends when no task row is due, and a raw message has no row: it was published on
    a connection of its own, so under load it may arrive after the good task's. The loop
    runs again (a few times, briefly) while messages still wait in the queue.
    """
    try:
        ran = run_until_empty()
        deadline = time.monotonic() + 5
        while on_broker() and left_in_broker().get("ready") and time.monotonic() < deadline:
            time.sleep(0.05)
            ran += run_until_empty()
        return ran
    except Exception as exc:
        raise WorkerLoopRaised(f"run_until_empty() raised {type(exc).__name__}: {exc}") from exc


def reset() -> None:
    TaskResult.objects.all().delete()
    Run.objects.all().delete()
    if on_broker():
        purge()


def assert_good_task_succeeded(good: Any, expected: Any) -> None:
    row = TaskResult.objects.get(task_id=good.id)
    assert row.state == states.SUCCESS, (row.state, row.result)
    assert row.result == expected


def assert_settled() -> None:
    """No row left waiting or leased, every failure with its reason."""
    # Only these columns: a row's arguments may be too deep for this process to read.
    fields = ("task_name", "task_id", "state", "lease_token", "result")
    for row in TaskResult.objects.only(*fields):
        assert row.state in READY, f"{row.task_name}[{row.task_id!r}] left {row.state}"
        assert row.lease_token is None, f"{row.task_id!r} still leased"
        if row.state == states.FAILURE:
            assert isinstance(row.result, dict), row.result
            assert row.result.get("exc_type"), row.result
            assert any(str(part) for part in row.result.get("exc_message") or []), row.result


@pytest.mark.broker
@pytest.mark.parametrize("defect", DEFECTS)
@bounded(10)
@given(data=st.data())
def test_a_raw_message_never_breaks_the_worker(defect: str | None, data: st.DataObject) -> None:
    message = data.draw(raw_messages(defect))
    reset()
    try:
        publish(message)
    except Exception as exc:  # the client or the broker refuses it: nothing to receive
        event(f"publish refused: {type(exc).__name__}")
        reject()
    good = tasks.add.delay(2, 2)

    run_worker()

    assert_good_task_succeeded(good, 4)
    assert not Run.objects.exists(), "the message without a row ran"
    others = TaskResult.objects.exclude(task_id=good.id)
    task_id = message.readable_id()
    if message.defect is None:
        assert not others.exists(), "a well-formed message without a row is dropped"
    elif task_id is None:
        assert not others.exists(), "nothing to record a message without a readable id under"
    else:
        row = others.get(task_id=task_id)
        note(f"recorded: {row.state} {row.result}")
        assert row.state == states.FAILURE
        assert "Bad message" in row.result["exc_message"][0]
        assert others.count() == 1
    assert_settled()
    assert not left_in_broker()


@pytest.mark.broker
@bounded(20)
@given(
    body=st.binary(max_size=100),
    headers=st.dictionaries(HEADER_NAMES, HEADER_VALUES, max_size=4),
    content_type=st.sampled_from(["application/json", *CONTENT_TYPES]) | NASTY_TEXT,
    content_encoding=st.sampled_from(["utf-8", "binary", "latin-1", "utf-16", "no-such", ""])
    | NASTY_TEXT,
)
def test_any_headers_and_content_type_never_break_the_worker(
    body: bytes, headers: dict[str, Any], content_type: str, content_encoding: str
) -> None:
    """Nothing about the message is known: only the worker's own properties are checked."""
    reset()
    try:
        publish(RawMessage(body, headers, content_type, content_encoding))
    except Exception as exc:
        event(f"publish refused: {type(exc).__name__}")
        reject()
    good = tasks.add.delay(2, 2)

    run_worker()

    assert_good_task_succeeded(good, 4)
    assert not Run.objects.exists()
    assert TaskResult.objects.exclude(task_id=good.id).exclude(state=states.FAILURE).count() == 0
    assert_settled()
    assert not left_in_broker()


# -- rows overwritten with garbage --------------------------------------------------------------

OPTION_KEYS = [
    "compression",
    "headers",
    "link",
    "link_error",
    "time_limit",
    "soft_time_limit",
    "ignore_result",
    "retry_policy",
    "serializer",
    "priority",
    "queue",
]
SMALL_NUMBERS = st.one_of(
    st.integers(-5, 5), st.floats(-1, 3), st.integers(2**40, 2**70), st.just(1e300)
)


@st.composite
def row_garbage(draw: st.DrawFn) -> tuple[dict[str, Any], str | None]:
    """Column values for a task row of ``record(label)``, and the defect that must make it
    fail (None: it may run, or fail)."""
    option_values = st.one_of(ROW_JSON, SMALL_NUMBERS)
    options = draw(
        st.one_of(
            st.dictionaries(st.sampled_from(OPTION_KEYS), option_values, max_size=3),
            st.dictionaries(CLEAN_TEXT, ROW_JSON, max_size=3),
            ROW_JSON,
        )
    )
    changes: dict[str, Any] = {}
    if draw(st.booleans()):
        changes["options"] = options
    which = draw(st.sampled_from(["args", "kwargs", "body", "content_type", "several"]))
    if which in ("args", "several"):
        changes["args"] = draw(ROW_JSON)
    if which in ("kwargs", "several"):
        changes["kwargs"] = draw(ROW_JSON)
    if which in ("body", "several"):
        changes["body"] = draw(
            st.one_of(
                st.binary(max_size=200),
                ROW_JSON.map(lambda v: _dumps(v).encode("utf-8", "surrogatepass")),
                st.just(b'[["from the body"], {}]'),
                st.just(zlib.compress(b'[["compressed"], {}]')),
            )
        )
        changes["content_type"] = draw(
            st.just("application/json")
            | st.sampled_from(CONTENT_TYPES)
            | CLEAN_TEXT.map(lambda t: t[:100])
        )
    if which == "content_type":
        changes["content_type"] = draw(CLEAN_TEXT.map(lambda t: t[:100]))
    return changes, expected_defect(changes)


def expected_defect(changes: dict[str, Any]) -> str | None:
    """What must make a row with ``changes`` fail, whatever its task does (None: nothing)."""
    options = changes.get("options")
    # None is SQL NULL: no options. (Falsy non-objects, [] 0 "" false, run as if they were
    # {}: see test_a_row_whose_options_are_falsy_but_not_an_object_fails.)
    if options and not isinstance(options, dict):
        return "options is not an object"
    if changes.get("body") is not None:  # the body, not args/kwargs, holds the arguments
        if changes["content_type"] != "application/json":
            return "content type not accepted"
        if not is_args_kwargs(changes["body"]) and not (options or {}).get("compression"):
            return "body is not [args, kwargs]"
        return None
    if changes.get("args") is not None and not isinstance(changes["args"], list):
        return "args is not a list"  # (None: no arguments)
    if changes.get("kwargs") is not None and not isinstance(changes["kwargs"], dict):
        return "kwargs is not an object"
    return None


def overwrite(task_id: str, changes: dict[str, Any]) -> None:
    try:
        with transaction.atomic():
            TaskResult.objects.filter(task_id=task_id).update(**changes)
    except (DatabaseError, ValueError, TypeError, RecursionError) as exc:
        # The database (or Django's JSON encoding) refuses the value: no such row can exist.
        event(f"update refused: {type(exc).__name__}")
        reject()


@bounded(40 if on_broker() else 150)
@given(garbage=row_garbage())
def test_a_garbage_row_never_breaks_the_worker(garbage: tuple[dict[str, Any], str | None]) -> None:
    changes, defect = garbage
    note(f"row changes: {changes!r}; expected defect: {defect}")
    reset()
    event(f"defect: {defect}")
    before = tasks.add.delay(1, 1)
    bad = tasks.record.delay("the garbage row")
    overwrite(bad.id, changes)
    after = tasks.add.delay(2, 2)

    run_worker()

    assert_good_task_succeeded(before, 2)
    assert_good_task_succeeded(after, 4)
    row = TaskResult.objects.filter(task_id=bad.id).first()
    if row is None:  # ignore_result: a success deletes its row
        assert isinstance(changes.get("options"), dict) and changes["options"].get("ignore_result")
    else:
        note(f"bad row: {row.state} {row.result}")
        if defect is not None:
            assert row.state == states.FAILURE, f"{defect}, yet {row.state}"
            assert not Run.objects.filter(task_id=bad.id).exists(), "a row that cannot run ran"
    assert_settled()
    if on_broker():
        assert not left_in_broker()


@pytest.mark.parametrize("options", [[], 0, "", False], ids=["[]", "0", "empty", "false"])
def test_a_row_whose_options_are_falsy_but_not_an_object_fails(options: Any) -> None:
    """Only NULL means no options: JSON [] 0 "" false are malformed (they used to be read
    as {} and run)."""
    bad = tasks.record.delay("falsy options")
    overwrite(bad.id, {"options": options})
    good = tasks.add.delay(2, 2)

    run_worker()

    assert_good_task_succeeded(good, 4)
    assert TaskResult.objects.get(task_id=bad.id).state == states.FAILURE
    assert not Run.objects.exists()


# -- values nested as deep as the writer's stack allows -----------------------------------------
#
# JSON is written and read recursively, so how deep a value can be depends on how deep the
# writer's and the reader's stacks are. A sender with a shallow stack (a fresh thread here, a
# short script or another program in real life) can store a value that the worker, reading
# it deeper down its own stack, cannot decode.


def in_fresh_thread(work: Any) -> Any:
    """``work()`` in a new thread (an empty stack), with its own database connection."""
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = work()
        except BaseException as exc:  # handed to the caller
            outcome["error"] = exc
        finally:
            connection.close()

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


def deepest(attempt: Any, low: int = 10, high: int = 5000) -> int:
    """The largest depth for which ``attempt(depth)`` does not raise ``RecursionError`` (or,
    for a write, a database error: newer SQLite's JSON_VALID check refuses deep JSON)."""
    while low < high:
        middle = (low + high + 1) // 2
        try:
            with transaction.atomic():
                attempt(middle)
            low = middle
        except (RecursionError, DatabaseError):
            high = middle - 1
    attempt(low)
    return low


def _row_value(column: str, depth: int) -> Any:
    return [deep(depth)] if column == "args" else {"deep": deep(depth)}


@pytest.mark.parametrize("column", ["args", "kwargs", "options"])
def test_a_row_nested_too_deep_to_read_fails_alone(column: str) -> None:
    """A column too deep for the worker's stack to decode fails its row alone (it used to
    raise RecursionError out of the claim for the whole batch, and crash-loop a prefork
    child)."""
    bad = tasks.record.delay("too deep")
    rows = TaskResult.objects.filter(task_id=bad.id)
    depth = in_fresh_thread(
        lambda: deepest(lambda d: rows.update(**{column: _row_value(column, d)}))
    )
    print(f"nested {depth} deep")
    try:
        rows.values_list(column, flat=True).get()
    except RecursionError:
        pass
    else:  # e.g. newer SQLite: JSON_VALID refuses JSON deeper than Python can decode
        pytest.skip(f"this database stores no JSON too deep to read (at most {depth} levels)")
    good = tasks.add.delay(2, 2)

    run_worker()

    assert_good_task_succeeded(good, 4)
    # Only the state: the column itself is too deep for this process to read, too.
    state = TaskResult.objects.filter(task_id=bad.id).values_list("state", flat=True).get()
    assert state == states.FAILURE
    assert_settled()
    if on_broker():
        assert not left_in_broker()


@pytest.mark.broker
def test_a_message_with_headers_nested_too_deep_to_read_never_breaks_the_worker() -> None:
    """Redis decodes the whole message with json.loads inside drain_events(); a
    RecursionError there used to escape the claim and crash the loop."""
    purge()
    task_id = str(uuid.uuid4())

    def publish_at(depth: int) -> None:
        headers = {"id": task_id, "task": GOOD_NAME, "deep": deep(depth)}
        publish(RawMessage(GOOD_BODY, headers, "application/json", "utf-8"))

    # Publish ever deeper headers until the client refuses; the last one went out.
    depth = in_fresh_thread(lambda: deepest(publish_at, high=3000))
    print(f"nested {depth} deep")
    purge()
    in_fresh_thread(lambda: publish_at(depth))
    good = tasks.add.delay(2, 2)

    run_worker()

    assert_good_task_succeeded(good, 4)
    assert not Run.objects.exists()
    assert_settled()
    assert not left_in_broker()


# -- Redis: what another program may push onto the queue's list ---------------------------------


def envelope(task_id: str) -> dict[str, Any]:
    """The JSON kombu keeps in a Redis list for one message (what ``publish`` puts there)."""
    return {
        "body": base64.b64encode(GOOD_BODY).decode(),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {"id": task_id, "task": GOOD_NAME},
        "properties": {
            "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": QUEUE},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": str(uuid.uuid4()),
        },
    }


ENVELOPE_PATHS = [
    ("body",),
    ("content-encoding",),
    ("content-type",),
    ("headers",),
    ("properties",),
    ("properties", "delivery_info"),
    ("properties", "body_encoding"),
    ("properties", "delivery_tag"),
    ("properties", "priority"),
]


@st.composite
def redis_items(draw: st.DrawFn) -> bytes:
    """Bytes for a Redis queue list: not JSON, JSON that is not an envelope, or an envelope
    with one part missing or replaced by garbage."""
    kind = draw(st.sampled_from(["bytes", "json", "envelope"]))
    if kind == "bytes":
        return draw(st.binary(max_size=100))
    if kind == "json":
        return _dumps(draw(JSON)).encode("utf-8", "surrogatepass")
    message = envelope(str(uuid.uuid4()))
    *parents, key = draw(st.sampled_from(ENVELOPE_PATHS))
    where = message
    for parent in parents:
        where = where[parent]
    if draw(st.booleans()):
        del where[key]
    else:
        where[key] = draw(JSON)
    return _dumps(message).encode("utf-8", "surrogatepass")


@pytest.mark.broker
@bounded(20)
@example(item=b"not json")
@given(item=redis_items())
def test_anything_pushed_onto_a_redis_queue_never_breaks_the_worker(item: bytes) -> None:
    """Whatever kombu cannot turn into a message (json.loads, Message(): properties,
    delivery_tag, body_encoding, headers) used to escape drain_events() and the claim."""
    if not broker_url().startswith(("redis", "rediss")):
        pytest.skip("about Redis lists")
    reset()
    with Connection(broker_url()) as conn:
        conn.channel().client.lpush(QUEUE, item)
    good = tasks.add.delay(2, 2)

    run_worker()

    assert_good_task_succeeded(good, 4)
    assert not Run.objects.exists()
    assert_settled()
    assert not left_in_broker()


# -- time limits from a garbage row -------------------------------------------------------------


@bounded(10)
@example(limit=-1)
@given(
    limit=st.one_of(
        st.floats(max_value=0, exclude_max=True), st.just(float("nan")), st.just(1e300), CLEAN_TEXT
    )
)
def test_a_garbage_time_limit_fails_its_task_and_leaves_the_alarm_alone(limit: Any) -> None:
    """A soft time limit setitimer() refuses (below 0, NaN, 1e300, text) used to leave the
    dead task's SIGALRM handler installed."""
    reset()
    bad = tasks.record.delay("garbage limit")
    overwrite(bad.id, {"options": {"soft_time_limit": limit}})
    good = tasks.add.delay(2, 2)
    handler = signal.getsignal(signal.SIGALRM)

    run_worker()

    assert_good_task_succeeded(good, 4)
    # Only the state: the column itself is too deep for this process to read, too.
    state = TaskResult.objects.filter(task_id=bad.id).values_list("state", flat=True).get()
    assert state == states.FAILURE
    assert_settled()
    leaked = signal.getsignal(signal.SIGALRM)
    signal.signal(signal.SIGALRM, handler)  # for the next example, and the next test
    assert leaked is handler, f"SIGALRM handler left as {leaked!r}"
