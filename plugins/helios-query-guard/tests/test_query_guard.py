import pytest

import helios_query_guard as guard


@pytest.mark.parametrize("sql, kind", [
    ("delete from t", "DELETE"), ("DELETE FROM t WHERE id = 1", None), ("update t set a = 1", "UPDATE"),
    ("update t set a = 1 where b", None), ("select 'delete from t'", None), ("select 1; delete from t", "DELETE"),
    ("with x as (select 1) delete from t", "DELETE"), ("explain analyze delete from t", "DELETE"),
    ("delete from t where true", None), ("not sql at all delete", None),
])
def test_unbounded(sql, kind):
    guard.configure({})
    assert guard.unbounded(sql) == kind


def test_only_configured_statements():
    guard.configure({"statements": ["delete"]})
    assert guard.unbounded("update t set a = 1") is None and guard.unbounded("delete from t") == "DELETE"
    with pytest.raises(ValueError):
        guard.configure({"statements": ["drop"]})
    guard.configure({})
