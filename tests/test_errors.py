"""`keep_driver_class`: connman's typed errors stay instances of the driver's class."""


import pymongo.errors
import pytest
import sqlalchemy.exc

from connman.errors import ConnmanError, PoolTimeout, StatementTimeout, keep_driver_class


def test_a_typed_error_is_caught_by_the_apps_own_driver_except_clause() -> None:
    cause = sqlalchemy.exc.OperationalError("SELECT 1", {}, TimeoutError("no answer"))
    error = keep_driver_class(StatementTimeout("pool 'main': slow", pool="main"), cause)
    with pytest.raises(sqlalchemy.exc.OperationalError) as caught:
        raise error
    assert isinstance(caught.value, StatementTimeout)
    assert isinstance(caught.value, ConnmanError)
    assert caught.value.__cause__ is cause
    assert caught.value.pool == "main"
    assert caught.value.orig is cause.orig  # the driver error's attributes come along
    assert str(caught.value) == "pool 'main': slow"  # connman's message, not the statement dump


def test_pymongo_labels_and_connman_fields_survive() -> None:
    cause = pymongo.errors.NetworkTimeout("timed out", errors={"errorLabels": ["RetryableWriteError"]})
    error = keep_driver_class(PoolTimeout("pool 'docs': busy", pool="docs", retry_after=3), cause)
    assert isinstance(error, pymongo.errors.NetworkTimeout)
    assert isinstance(error, PoolTimeout)
    assert error.retry_after == 3
    assert error.timeout  # PyMongo's own property, read from the copied state
    assert "docs" in repr(error)


def test_the_combined_class_is_made_once_per_pair() -> None:
    a = keep_driver_class(StatementTimeout("x", pool="p"), pymongo.errors.NetworkTimeout("a"))
    b = keep_driver_class(StatementTimeout("y", pool="q"), pymongo.errors.NetworkTimeout("b"))
    assert type(a) is type(b)
    assert type(a).__name__ == "StatementTimeout"


def test_an_error_already_of_the_drivers_class_is_returned_as_is() -> None:
    cause = TimeoutError("t")
    error = StatementTimeout("pool 'p': slow", pool="p")
    assert keep_driver_class(error, cause) is error
    assert error.__cause__ is cause


def test_a_typed_cause_lends_its_drivers_class_not_connmans_twice() -> None:
    from connman.errors import ServerUnavailable

    refused = ConnectionRefusedError(111, "refused")
    lower = keep_driver_class(ServerUnavailable("pool 'p': refused", pool="p", kind="unreachable"),
                              refused)
    upper = keep_driver_class(ServerUnavailable("pool 'p': down since", pool="p", kind="down"),
                              lower)
    assert isinstance(upper, ConnectionRefusedError)
    assert upper.kind == "down"  # connman's own fields are the outer error's
    assert upper.__cause__ is lower
    assert type(upper).__mro__.count(ServerUnavailable) == 1
    timeout = keep_driver_class(StatementTimeout("pool 'p': slow", pool="p"), lower)
    assert isinstance(timeout, ConnectionRefusedError)
    assert not isinstance(timeout, ServerUnavailable)
