"""The call-time argument check agrees with ``inspect.Signature.bind`` for every signature."""

import inspect

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from django_tasks.task import _signature_checker

NAMES = ["a", "b", "c", "d", "e"]
KINDS = [
    inspect.Parameter.POSITIONAL_ONLY,
    inspect.Parameter.POSITIONAL_OR_KEYWORD,
    inspect.Parameter.VAR_POSITIONAL,
    inspect.Parameter.KEYWORD_ONLY,
    inspect.Parameter.VAR_KEYWORD,
]


@st.composite
def signatures(draw):
    """Valid signatures: kinds in order, at most one * and one **, defaults where allowed."""
    kinds = sorted(draw(st.lists(st.sampled_from(KINDS), max_size=5)), key=KINDS.index)
    params, defaulted = [], False
    for index, kind in enumerate(kinds):
        if kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
            if any(p.kind is kind for p in params):
                continue
            params.append(inspect.Parameter(f"v{index}", kind))
            continue
        positional = kind is not inspect.Parameter.KEYWORD_ONLY
        default = inspect.Parameter.empty
        if draw(st.booleans()) or (positional and defaulted):
            default = 0
            defaulted = defaulted or positional
        params.append(inspect.Parameter(NAMES[index], kind, default=default))
    return inspect.Signature(params)


calls = st.tuples(
    st.lists(st.integers(), max_size=6),
    st.dictionaries(st.sampled_from([*NAMES, "v2", "v4", "zz"]), st.integers(), max_size=4),
)


def binds(signature, args, kwargs):
    try:
        signature.bind(*args, **kwargs)
    except TypeError:
        return False
    return True


def fits(checker, args, kwargs):
    try:
        checker(*args, **kwargs)
    except TypeError:
        return False
    return True


@settings(max_examples=400, deadline=None)
@given(signatures(), calls)
def test_the_fast_check_accepts_exactly_what_bind_accepts(signature, call):
    args, kwargs = call
    checker = _signature_checker(signature)
    assert checker is not None, signature
    bound = binds(signature, args, kwargs)
    expected = bound or into_var_keyword(signature, args, kwargs)
    # The check accepts what either accepts (a misfit goes on to bind, for its message):
    # never more than bind does, but for the interpreter's own case below.
    assert (fits(checker, args, kwargs) or bound) == expected, (signature, call)


def into_var_keyword(signature, args, kwargs):
    """Where ``bind`` (before Python 3.13) is stricter than the interpreter (which the
    worker's call goes through): a positional-only parameter's name given as a keyword
    lands in ``**kwargs``. (3.13's ``bind`` accepts it even when that parameter is then
    missing, which the interpreter refuses; the check then accepts it, as before.)"""
    params = signature.parameters.values()
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return False
    positional_only = {p.name for p in params if p.kind is inspect.Parameter.POSITIONAL_ONLY}
    renamed = {(f"{k}_extra" if k in positional_only else k): v for k, v in kwargs.items()}
    return binds(signature, args, renamed)


@pytest.mark.django_db
def test_a_misfit_still_says_what_is_wrong_in_binds_words():
    from tests.taskapp import tasks

    with pytest.raises(TypeError, match=r"tests\.taskapp\.tasks\.add\(\) missing a required"):
        tasks.add.delay(1)
    with pytest.raises(TypeError, match="got an unexpected keyword argument 'z'"):
        tasks.add.apply_async((1, 2), {"z": 3})
    with pytest.raises(TypeError, match="keywords must be strings|unexpected keyword"):
        tasks.add.apply_async((1, 2), {1: 3})
