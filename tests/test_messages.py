"""Stored exceptions are rebuilt only as exception types; everything else is a TaskError."""

import pytest

from django_tasks.exceptions import TaskError
from django_tasks.messages import exception_from_dict, exception_to_dict


def test_an_exception_round_trips_as_its_own_type_with_the_traceback():
    exc = exception_from_dict(exception_to_dict(KeyError("k")), "Traceback: ...")
    assert type(exc) is KeyError
    assert exc.args == ("k",)
    assert exc.remote_traceback == "Traceback: ..."
    assert "Remote traceback:" in exc.__notes__[0]


@pytest.mark.parametrize(
    "stored",
    [
        {"exc_type": "OrderedDict", "exc_module": "collections", "exc_message": []},
        {"exc_type": "path", "exc_module": "os", "exc_message": ["x"]},
        {"exc_type": "Nope", "exc_module": "no.such.module", "exc_message": ["x"]},
        "not even a dict",
    ],
)
def test_anything_but_an_importable_exception_class_becomes_task_error(stored):
    assert type(exception_from_dict(stored)) is TaskError
