"""The one way statements run (widen.db): a '%' in a name or a literal survives psycopg2's
%-formatting in execute, mogrify and execute_values; errors are described by their real cause."""
import psycopg2
import pytest
from psycopg2 import sql

from widen import errors
from widen.pg import db

NAMES = ["pct%ship", "%s", "%(x)s", "%%", "100%", "{}", "q\"u'o\\te", "tab\tnew\nline", "🚢"]


@pytest.fixture()
def session(pg_server):
    conn = db.open_session({"host": pg_server["host"], "port": pg_server["port"], "dbname": pg_server["database"],
                            "user": pg_server["user"]}, autocommit=True)
    with conn.cursor() as cur:
        cur.execute("DROP SCHEMA IF EXISTS dbtest CASCADE; CREATE SCHEMA dbtest")
    yield conn
    conn.close()


@pytest.mark.parametrize("name", NAMES)
def test_percent_in_names_and_literals(session, name):
    table = sql.Identifier("dbtest", name)
    with session.cursor() as cur:
        cur.execute(sql.SQL("CREATE TABLE {} ({} text, n int)").format(table, sql.Identifier(name)))
        cur.execute(sql.SQL("COMMENT ON COLUMN {}.{} IS %s").format(table, sql.Identifier(name)), (f"about {name}",))
        db.execute_values(cur, sql.SQL("INSERT INTO {} ({}, n) VALUES %s").format(table, sql.Identifier(name)),
                          [(name, 1), ("%s", 2)])
        cur.execute(sql.SQL("SELECT {c}, n, {lit} FROM {t} WHERE n = %(n)s").format(
            c=sql.Identifier(name), lit=sql.Literal(name), t=table), {"n": 1})
        assert cur.fetchone() == (name, 1, name)
        literal = sql.Literal(name).as_string(cur).encode()
        mogrified = cur.mogrify(sql.SQL("SELECT {} WHERE 1 = %s").format(sql.Literal(name)), (1,))
        assert mogrified == b"SELECT " + literal + b" WHERE 1 = 1"


def test_errors_name_the_real_exception(session):
    with session.cursor() as cur, pytest.raises(psycopg2.Error) as err:
        cur.execute("SELECT 1 / 0")
    assert errors.describe(err.value) == "DivisionByZero: division by zero"
    assert not errors.is_ship_level(psycopg2.OperationalError("server closed the connection unexpectedly"))
    assert errors.is_ship_level(err.value)
