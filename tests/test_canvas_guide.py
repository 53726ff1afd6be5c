"""Celery's Canvas guide, example by example, against this app (docs/canvas.md shows them).

Each runs through the worker's loop in-process, then eagerly: the answers are Celery's.
"""

import pytest

from django_tasks import chain, chord, group
from django_tasks.exceptions import ChordError
from django_tasks.testing import run_until_empty
from tests.taskapp.tasks import add, fail, mul, tsum

pytestmark = pytest.mark.django_db


@pytest.fixture(params=["worker", "eager"], autouse=True)
def mode(request, settings):
    settings.DJANGO_TASKS = {"TASK_ALWAYS_EAGER": request.param == "eager"}
    return request.param


def done(result):
    """Run what was sent, then hand the result back."""
    while run_until_empty():
        pass
    return result


def test_partials():
    partial = add.s(2)
    assert done(partial.delay(4)).get(timeout=10) == 6
    assert done(add.s(2, 2).apply_async(countdown=0)).get(timeout=10) == 4


def test_callbacks_and_immutable_signatures():
    res = done(add.apply_async((2, 2), link=add.s(8)))
    assert res.get(timeout=10) == 4
    assert done(add.apply_async((2, 2), link=add.si(1, 1))).get(timeout=10) == 4


def test_the_primitives():
    assert done(group(add.s(2, 2), add.s(4, 4))()).get(timeout=10) == [4, 8]
    assert done(chain(add.s(2, 2), add.s(4), add.s(8))()).get(timeout=10) == 16
    assert done((add.s(2, 2) | add.s(4) | add.s(8))()).get(timeout=10) == 16
    assert done(chord((add.s(i, i) for i in range(10)), tsum.s())()).get(timeout=10) == 90
    assert done((group(add.s(i, i) for i in range(10)) | tsum.s())()).get(timeout=10) == 90


def test_chains():
    res = done(chain(add.s(4, 4), mul.s(8), mul.s(10))())
    assert res.get(timeout=10) == 640
    c1 = add.s(4) | mul.s(8)
    assert done(c1(16)).get(timeout=10) == 160
    c2 = add.s(4, 4) | mul.s(8) | mul.s(10)
    res = done(c2())
    assert res.get(timeout=10) == 640
    assert res.parent.get(timeout=10) == 64
    assert res.parent.parent.get(timeout=10) == 8
    assert res.parent.parent.parent is None
    assert done((add.si(2, 2) | add.si(4, 4) | add.si(8, 8))()).get(timeout=10) == 16


def test_groups():
    res = done(group(add.s(i, i) for i in range(10))())
    assert res.get(timeout=10) == [0, 2, 4, 6, 8, 10, 12, 14, 16, 18]
    job = group([add.s(2, 2), add.s(4, 4), add.s(8, 8), add.s(16, 16), add.s(32, 32)])
    result = done(job.apply_async())
    assert result.ready() and result.successful()
    assert result.get() == [4, 8, 16, 32, 64]
    assert result.completed_count() == 5


def test_chords():
    header = [add.s(i, i) for i in range(100)]
    result = done(chord(header)(tsum.s()))
    assert result.get(timeout=30) == 9900


def test_chord_error_handling():
    c = chord([add.s(4, 4), fail.s("something something"), add.s(8, 8)])
    result = done(c(tsum.s()))
    with pytest.raises(ChordError) as raised:
        result.get(timeout=10)
    failed = result.parent.results[1].id
    assert str(raised.value) == f"Dependency {failed} raised CustomError('something something')"


def test_nesting():
    # A chain whose middle is a group becomes a chord.
    res = done((add.s(4, 4) | group(add.si(2, 2), add.si(4, 4)) | tsum.s())())
    assert res.get(timeout=10) == 12
    # A group of chains.
    res = done(group(add.s(2, 2) | mul.s(2), add.s(4, 4) | mul.s(4))())
    assert res.get(timeout=10) == [8, 32]
