"""map, starmap and chunks (Celery's names): one task calling another for each item, and a
list of argument tuples split into a group of such tasks. Run by the worker's loop and
eagerly; on every transport."""

import json

import pytest

from django_tasks import GroupResult, Signature, chain, chunks, group, xmap, xstarmap
from django_tasks.exceptions import EncodeError
from django_tasks.models import TaskResult
from django_tasks.testing import run_until_empty
from tests.taskapp import tasks

pytestmark = pytest.mark.django_db


@pytest.fixture(params=["worker", "eager"])
def mode(request, settings):
    settings.DJANGO_TASKS = {**settings.DJANGO_TASKS, "TASK_ALWAYS_EAGER": request.param == "eager"}
    return request.param


def drain(queues=None):
    while run_until_empty(queues):
        pass


def test_map_is_one_task_whose_result_lists_the_calls(mode):
    result = tasks.tsum.map([[1, 2], [3, 4], list(range(10))]).apply_async()
    drain()
    assert result.get(timeout=5) == [3, 7, 45]
    if mode == "worker":
        (row,) = TaskResult.objects.all()
        assert row.task_name == "django_tasks.map"


def test_starmap_calls_with_each_items_arguments(mode):
    result = tasks.add.starmap(zip(range(5), range(5), strict=True)).delay()
    drain()
    assert result.get(timeout=5) == [0, 2, 4, 6, 8]


def test_calling_a_map_runs_it_here():
    assert tasks.add.starmap([(1, 2), (3, 4)])() == [3, 7]
    assert tasks.tsum.map([[1], [2, 3]])() == [1, 5]


def test_chunks_send_a_group_of_starmaps_whose_result_is_a_list_of_lists(mode):
    items = list(zip(range(25), range(25), strict=True))
    result = tasks.add.chunks(items, 10)()
    assert isinstance(result, GroupResult)
    assert len(result.results) == 3
    drain()
    assert result.get(timeout=5) == [
        [2 * i for i in range(0, 10)],
        [2 * i for i in range(10, 20)],
        [2 * i for i in range(20, 25)],
    ]
    if mode == "worker":
        assert GroupResult.restore(result.id).completed_count() == 3


def test_chunks_in_a_chain_is_its_group_and_upgrades_to_a_chord(mode):
    parts = tasks.add.chunks([(1, 1), (2, 2), (3, 3)], 2)
    as_group = parts.group()
    assert isinstance(as_group, group)
    assert [type(t) for t in as_group.tasks] == [xstarmap, xstarmap]
    result = chain(parts, tasks.listing.s()).apply_async()
    drain()
    assert result.get(timeout=5) == [[[2, 4], [6]]]  # the chord's body got both chunks


def test_a_map_goes_to_the_queue_of_the_task_it_calls():
    result = tasks.square.map([1, 2, 3]).apply_async()
    assert TaskResult.objects.get(task_id=result.id).queue == "squares"
    drain(["squares"])
    assert result.get(timeout=5) == [1, 4, 9]
    other = tasks.square.map([4]).apply_async(queue="default")
    assert TaskResult.objects.get(task_id=other.id).queue == "default"
    parts = tasks.square.chunks([(5,), (6,)], 1)()
    assert {r.queue for r in TaskResult.objects.filter(group_id=parts.id)} == {"squares"}
    drain(["squares"])
    assert parts.get(timeout=5) == [[25], [36]]


def test_an_item_that_raises_fails_the_map(mode):
    result = tasks.add.starmap([(1, 1), (1, "x")]).apply_async()
    drain()
    with pytest.raises(TypeError):
        result.get(timeout=5)


def test_map_signatures_survive_a_json_round_trip():
    for sig in (
        tasks.add.starmap([(1, 2)]),
        tasks.tsum.map([[1]]),
        tasks.add.chunks([(1, 2)], 1),
    ):
        again = Signature.from_dict(json.loads(json.dumps(sig)))
        assert type(again) is type(sig)
        assert again == sig
    assert isinstance(Signature.from_dict(dict(tasks.add.chunks([(1, 2)], 1))), chunks)
    assert isinstance(xmap(tasks.tsum, [[1]]), xmap)


@pytest.mark.parametrize(
    ("build", "error", "message"),
    [
        (lambda: tasks.add.chunks([(1, 2)], 0), ValueError, "n must be a positive integer"),
        (lambda: tasks.add.chunks([(1, 2)], True), ValueError, "n must be a positive integer"),
        (lambda: tasks.add.chunks([(1, 2)], 2.5), ValueError, "n must be a positive integer"),
        (lambda: tasks.add.starmap([(1, 2), 3]), TypeError, "item 1 must be a list or tuple"),
        (lambda: tasks.add.chunks([(1, 2), "ab"], 1), TypeError, "item 1 must be a list"),
        (lambda: tasks.tsum.map("abc"), TypeError, "take a list of items, not str"),
        (lambda: tasks.tsum.map(5), TypeError, "take a list of items, not int"),
        (lambda: tasks.add.chunks([(1, 2)], 1)(1), TypeError, "takes no arguments"),
        (lambda: tasks.add.chunks([(1, 2)], 1).apply_async((1,)), TypeError, "no arguments"),
        (lambda: tasks.add.chunks([(1, 2)], 1).apply_async(kwargs={"y": 1}), TypeError, "no"),
        (lambda: tasks.add.chunks([(1, 2)], 1).apply([1]), TypeError, "takes no arguments"),
        (lambda: xmap(group(tasks.add.s(1)), [1]), TypeError, "call a task, not a group"),
        (lambda: chunks(tasks.add.s() | tasks.add.s(1), [(1, 2)], 1), TypeError, "not a chain"),
    ],
)
def test_bad_maps_are_refused_when_built(build, error, message):
    with pytest.raises(error, match=message):
        build()
    assert not TaskResult.objects.exists()


@pytest.mark.parametrize("item", [float("nan"), "nul\x00", "\ud800", object()])
def test_an_item_that_cannot_be_stored_is_refused_at_the_send(item):
    with pytest.raises(EncodeError, match="django_tasks.map"):
        tasks.tsum.map([[1], item]).apply_async()
    assert not TaskResult.objects.exists()
