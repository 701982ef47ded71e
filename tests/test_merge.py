"""The column-wise upsert, both forms (MERGE on PG 15+, INSERT … ON CONFLICT on 11–14)."""
import datetime as dt

import pytest
from psycopg2 import sql

from widen.targets import postgres as sinks

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
T1 = T0 + dt.timedelta(seconds=15)


def make_tables(cur, schema: str, columns: list[str]) -> None:
    """A fresh schema with wide table ``w`` and staging table ``s``, text columns ``columns``."""
    cols = sql.SQL(", ").join(sql.SQL("{} text").format(sql.Identifier(c)) for c in columns)
    cur.execute(sql.SQL("DROP SCHEMA IF EXISTS {s} CASCADE; CREATE SCHEMA {s}").format(s=sql.Identifier(schema)))
    cur.execute(sql.SQL("CREATE TABLE {}.w (created_time timestamptz PRIMARY KEY, {})").format(
        sql.Identifier(schema), cols))
    cur.execute(sql.SQL("CREATE TABLE {}.s (created_time timestamptz, {})").format(sql.Identifier(schema), cols))


@pytest.mark.parametrize("server_version", [150000, 140000])
def test_merge_sets_only_the_columns_present(pg, server_version):
    schema = f"merge_{server_version}"
    with pg.cursor() as cur:
        make_tables(cur, schema, ["a", "B b"])
        cur.execute(sql.SQL("INSERT INTO {}.w VALUES (%s, 'old a', 'old b')").format(sql.Identifier(schema)), (T0,))
        cur.execute(sql.SQL("INSERT INTO {}.s VALUES (%s, NULL, 'new b'), (%s, 'fresh', NULL)").format(
            sql.Identifier(schema)), (T0, T1))
        cur.execute(sinks.merge_statement(server_version, sql.Identifier(schema, "w"),
                                          sql.Identifier(schema, "s"), ["a", "B b"]))
        cur.execute(sql.SQL("SELECT created_time, a, \"B b\" FROM {}.w ORDER BY 1").format(sql.Identifier(schema)))
        assert cur.fetchall() == [(T0, "old a", "new b"), (T1, "fresh", None)]
        # Replaying the same staging rows changes nothing.
        cur.execute(sql.SQL("SELECT xmin::text FROM {}.w ORDER BY created_time").format(sql.Identifier(schema)))
        versions = cur.fetchall()
        cur.execute(sinks.merge_statement(server_version, sql.Identifier(schema, "w"),
                                          sql.Identifier(schema, "s"), ["a", "B b"]))
        cur.execute(sql.SQL("SELECT created_time, a, \"B b\" FROM {}.w ORDER BY 1").format(sql.Identifier(schema)))
        assert cur.fetchall() == [(T0, "old a", "new b"), (T1, "fresh", None)]
        if server_version >= 150000:
            cur.execute(sql.SQL("SELECT xmin::text FROM {}.w ORDER BY created_time").format(sql.Identifier(schema)))
            assert cur.fetchall() == versions


@pytest.mark.parametrize("server_version", [150000, 140000])
def test_greatest_keeps_the_greater_value_by_byte_order(pg, server_version):
    """Across micro-batches without an order column: the greatest value (COLLATE "C") stays."""
    schema = f"merge_greatest_{server_version}"
    with pg.cursor() as cur:
        make_tables(cur, schema, ["a", "b", "c"])
        # 'B' < 'a' in byte order although 'a' < 'B' in most locales.
        cur.execute(sql.SQL("INSERT INTO {}.w VALUES (%s, 'a', 'keep', NULL)").format(sql.Identifier(schema)), (T0,))
        cur.execute(sql.SQL("INSERT INTO {}.s VALUES (%s, 'B', NULL, 'x'), (%s, 'n', 'e', 'w')").format(
            sql.Identifier(schema)), (T0, T1))
        statement = sinks.merge_statement(server_version, sql.Identifier(schema, "w"),
                                          sql.Identifier(schema, "s"), ["a", "b", "c"], greatest=True)
        cur.execute(statement)
        cur.execute(sql.SQL("SELECT * FROM {}.w ORDER BY 1").format(sql.Identifier(schema)))
        assert cur.fetchall() == [(T0, "a", "keep", "x"), (T1, "n", "e", "w")]
        cur.execute(sql.SQL("UPDATE {}.s SET a = 'b' WHERE created_time = %s").format(sql.Identifier(schema)), (T0,))
        cur.execute(statement)
        cur.execute(sql.SQL("SELECT a FROM {}.w WHERE created_time = %s").format(sql.Identifier(schema)), (T0,))
        assert cur.fetchone() == ("b",)
