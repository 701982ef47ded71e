"""The independent oracle: an in-database SQL pivot written here, not taken from widen.

It renders values with its own CASE, applies its own validity rule and duplicate rule
(``max(... COLLATE "C")``), and compares with the wide tables with EXCEPT both ways.
"""
from __future__ import annotations

from psycopg2 import sql

RENDER = sql.SQL(
    "CASE value_format WHEN 'Decimal' THEN double_v::text WHEN 'Integer' THEN long_v::text "
    "WHEN 'String' THEN str_v WHEN 'Boolean' THEN bool_v::text END")
VALID = sql.SQL(
    "ship_id IS NOT NULL AND ship_id <> '' AND data_channel_id IS NOT NULL AND data_channel_id <> '' "
    "AND created_time IS NOT NULL AND value_format IN ('Decimal', 'Integer', 'String', 'Boolean')")


def valid_channels(cur, src_schema: str, ship: str) -> set[str]:
    cur.execute(sql.SQL("SELECT DISTINCT data_channel_id FROM {} WHERE ship_id = %s AND {}").format(
        sql.Identifier(src_schema, "tbl_data_timeseries"), VALID), (ship,))
    return {r[0] for r in cur.fetchall()}


def valid_ships(cur, src_schema: str) -> set[str]:
    cur.execute(sql.SQL("SELECT DISTINCT ship_id FROM {} WHERE {}").format(
        sql.Identifier(src_schema, "tbl_data_timeseries"), VALID))
    return {r[0] for r in cur.fetchall()}


def catalog_mapping(cur, catalog_schema: str, ship: str) -> dict[str, list[tuple[str, str]]]:
    """table name -> [(channel, column)] from the catalog."""
    cur.execute(sql.SQL("SELECT table_name, data_channel_id, column_name FROM {} WHERE ship_id = %s")
                .format(sql.Identifier(catalog_schema, "channel_columns")), (ship,))
    out: dict[str, list[tuple[str, str]]] = {}
    for table, channel, column in cur.fetchall():
        out.setdefault(table, []).append((channel, column))
    return out


def narrow_rows(src_schema: str, order_column: str | None = None,
                exclude: sql.Composable | None = None) -> sql.Composable:
    """The narrow rows the pivot reads: all of them, or with an order column only the last valid row
    per (ship, created_time, channel); ``exclude`` is a condition for rows left out (e.g. late rows)."""
    table = sql.Identifier(src_schema, "tbl_data_timeseries")
    keep = sql.SQL("NOT ({})").format(exclude) if exclude is not None else sql.SQL("true")
    if order_column is None:
        return sql.SQL("(SELECT * FROM {} WHERE {}) n").format(table, keep)
    # a rejected row is not a reading: it never replaces the last valid one
    return sql.SQL("(SELECT DISTINCT ON (ship_id, created_time, data_channel_id) * FROM {t} WHERE {k} AND {v} "
                   "ORDER BY ship_id, created_time, data_channel_id, {o} DESC) n").format(
        t=table, k=keep, v=VALID, o=sql.Identifier(order_column))


def differences(cur, src_schema: str, tgt_schema: str, catalog_schema: str, ship: str,
                start=None, end=None, narrow: sql.Composable | None = None) -> dict[str, tuple[int, int]]:
    """Per wide table: (rows only in the wide table, rows only in the oracle pivot)."""
    narrow = narrow if narrow is not None else narrow_rows(src_schema)
    cur.execute("SET jit = off")
    time_filter = sql.SQL("")
    if start is not None:
        time_filter = sql.SQL(" AND created_time >= {} AND created_time < {}").format(
            sql.Literal(start), sql.Literal(end))
    # Everything is inlined as literals and run without parameters, so psycopg2 never %-formats
    # the text (a channel named 'pct%s' stays as it is).
    params = None
    out = {}
    for table, pairs in catalog_mapping(cur, catalog_schema, ship).items():
        # typed columns (target.column_types typed) compared by the text PostgreSQL prints for them
        cols = sql.SQL(", ").join(sql.SQL("{}::text").format(sql.Identifier(col)) for _, col in pairs)
        pivot = sql.SQL(", ").join(
            sql.SQL("max(({r}) COLLATE \"C\") FILTER (WHERE data_channel_id = {ch})").format(
                r=RENDER, ch=sql.Literal(ch)) for ch, _ in pairs)
        wide = sql.SQL("SELECT created_time, {c} FROM {t} WHERE true{f}").format(
            c=cols, t=sql.Identifier(tgt_schema, table), f=time_filter)
        pivoted = sql.SQL("SELECT created_time, {p} FROM {t} WHERE ship_id = {s} AND {v}{f} "
                          "GROUP BY created_time").format(
            p=pivot, t=narrow, s=sql.Literal(ship), v=VALID, f=time_filter)
        cur.execute(sql.SQL("SELECT count(*) FROM ({w} EXCEPT ALL {n}) x").format(w=wide, n=pivoted), params)
        only_wide = cur.fetchone()[0]
        cur.execute(sql.SQL("SELECT count(*) FROM ({n} EXCEPT ALL {w}) x").format(w=wide, n=pivoted), params)
        out[table] = (only_wide, cur.fetchone()[0])
        if out[table] != (0, 0):            # show a few rows of each side to whoever reads the failure
            for label, query in (("only wide", sql.SQL("({w} EXCEPT ALL {n})")),
                                 ("only oracle", sql.SQL("({n} EXCEPT ALL {w})"))):
                cur.execute(sql.SQL("SELECT * FROM {} x ORDER BY 1 LIMIT 3").format(
                    query.format(w=wide, n=pivoted)), params)
                print(f"oracle: {ship} {table} {label}: {cur.fetchall()}")
    return out


def assert_equal_to_oracle(cur, src_schema: str, tgt_schema: str, catalog_schema: str,
                           order_column: str | None = None, exclude: sql.Composable | None = None) -> None:
    ships = valid_ships(cur, src_schema)
    cur.execute(sql.SQL("SELECT DISTINCT ship_id FROM {}").format(
        sql.Identifier(catalog_schema, "wide_tables")))
    assert {r[0] for r in cur.fetchall()} == ships
    for ship in ships:
        mapping = catalog_mapping(cur, catalog_schema, ship)
        assert {ch for pairs in mapping.values() for ch, _ in pairs} == valid_channels(cur, src_schema, ship)
        diffs = differences(cur, src_schema, tgt_schema, catalog_schema, ship,
                            narrow=narrow_rows(src_schema, order_column, exclude))
        assert all(d == (0, 0) for d in diffs.values()), (ship, diffs)


def copy_delta_tables(spark, cur, delta_root: str, catalog_schema: str, into_schema: str) -> None:
    """Copy every Delta wide table of the catalog into PostgreSQL tables of ``into_schema`` (same
    names), so ``assert_equal_to_oracle`` compares them with the SQL pivot. The copy's primary key
    on created_time fails loudly if a Delta table holds a timestamp twice, and each table's columns
    must be exactly created_time + the catalog's columns."""
    from widen.targets.delta import quoted, table_dir

    cur.execute(sql.SQL("DROP SCHEMA IF EXISTS {s} CASCADE; CREATE SCHEMA {s}").format(s=sql.Identifier(into_schema)))
    cur.execute(sql.SQL("SELECT table_name, array_agg(column_name ORDER BY column_name), "
                        "array_agg(coalesce(column_type, 'text') ORDER BY column_name) FROM {} c "
                        "GROUP BY 1").format(sql.Identifier(catalog_schema, "channel_columns")))
    rows = cur.fetchall()
    columns = {table: names for table, names, _ in rows}
    # typed columns (target.column_types typed) keep their type, so the oracle compares their text
    # as PostgreSQL prints it; a double goes over as its exact repr (psycopg2 loses -0.0)
    kinds = {table: dict(zip(names, types)) for table, names, types in rows}
    cur.execute(sql.SQL("SELECT table_name FROM {}").format(sql.Identifier(catalog_schema, "wide_tables")))
    for (table,) in cur.fetchall():
        frame = spark.read.format("delta").load(f"{delta_root}/{table_dir(table)}")
        expected = columns.get(table, [])
        assert sorted(frame.columns) == sorted(["created_time", *expected]), (table, frame.columns)
        cur.execute(sql.SQL("CREATE TABLE {} (created_time timestamptz PRIMARY KEY{})").format(
            sql.Identifier(into_schema, table),
            sql.SQL("").join(sql.SQL(", {} {}").format(sql.Identifier(c), sql.SQL(kinds[table][c])) for c in expected)))
        rows = frame.select("created_time", *[quoted(c) for c in expected]).toArrow().to_pylist()
        if rows:
            from psycopg2.extras import execute_values

            # execute_values %-formats its text: a '%' in the table name must be doubled first.
            insert = "INSERT INTO " + sql.Identifier(into_schema, table).as_string(cur).replace("%", "%%")
            from psycopg2.extensions import AsIs

            execute_values(cur, insert + " VALUES %s", [
                tuple(AsIs(f"'{v!r}'::float8") if isinstance(v, float) else v for v in r.values()) for r in rows])


def reader_view(cur, catalog_schema: str, ship: str) -> tuple[sql.Identifier, str, list[str]]:
    """A ship's reader view: (its name, what it reads, its columns in order), from the catalog and
    pg_attribute."""
    cur.execute(sql.SQL("SELECT view_schema, view_name, reads FROM {} WHERE ship_id = %s").format(
        sql.Identifier(catalog_schema, "reader_views")), (ship,))
    schema, name, reads = cur.fetchone()
    cur.execute("SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 ORDER BY attnum",
                (sql.Identifier(schema, name).as_string(cur),))
    return sql.Identifier(schema, name), reads, [r[0] for r in cur.fetchall()]
