"""Unit tests of the pure transforms, with chispa, on small inline DataFrames."""
import datetime as dt

import pytest
from chispa import assert_df_equality
from pyspark.sql.types import LongType, StringType, StructField, StructType, TimestampType

from widen.core import transforms as transform

UTC = dt.UTC
T0 = dt.datetime(2026, 1, 1, 0, 0, 0, tzinfo=UTC)
T1 = dt.datetime(2026, 1, 1, 0, 0, 15, tzinfo=UTC)
T2 = dt.datetime(2026, 1, 1, 0, 0, 30, 123456, tzinfo=UTC)

NARROW = StructType([StructField("created_time", TimestampType()),
                     StructField("data_channel_id", StringType()),
                     StructField("value", StringType())])
RAW = StructType([StructField("ship_id", StringType()), StructField("data_channel_id", StringType()),
                  StructField("created_time", TimestampType()), StructField("value_format", StringType())])


def test_reject_reasons(spark):
    rows = [("s1", "ch", T0, "Decimal"), (None, "ch", T0, "Decimal"), ("s1", None, T0, "String"),
            ("s1", "", T0, "String"), ("s1", "ch", None, "Integer"), ("s1", "ch", T0, None),
            ("s1", "ch", T0, "Float"), ("s1", "ch", T0, "decimal"), ("s1", "ch", T0, "Boolean")]
    actual = spark.createDataFrame(rows, RAW).transform(transform.with_reject_reason)
    expected = spark.createDataFrame(
        [r + (reason,) for r, reason in zip(rows, [
            None, "null ship_id", "null data_channel_id", "empty data_channel_id", "null created_time",
            "null value_format", "unknown value_format", "unknown value_format", None])],
        StructType(RAW.fields + [StructField("reject_reason", StringType())]))
    assert_df_equality(actual, expected, ignore_row_order=True)


def test_valid_and_rejected_rows_split_without_loss(spark):
    rows = [("s1", "ch", T0, "Decimal"), ("s1", "ch", T0, "Float"), (None, "x", T1, "String")]
    marked = spark.createDataFrame(rows, RAW).transform(transform.with_reject_reason)
    assert_df_equality(transform.valid_rows(marked), spark.createDataFrame(rows[:1], RAW))
    assert sorted(r.reject_reason for r in transform.rejected_rows(marked).collect()) == \
        ["null ship_id", "unknown value_format"]


def test_dedup_keeps_greatest_value_by_byte_order_and_null_only_when_all_null(spark):
    rows = [(T0, "a", "1"), (T0, "a", "9"), (T0, "a", "10"),          # '9' > '10' as text
            (T0, "b", None), (T0, "b", "x"),                          # a value beats NULL
            (T0, "c", None), (T0, "c", None),                         # all NULL -> NULL
            (T1, "a", "z"), (T1, "a", "é"),                           # UTF-8 bytes: 'é' > 'z'
            (T1, "d", "Z"), (T1, "d", "a"),                           # byte order, not locale
            (T2, "a", "only")]
    actual = spark.createDataFrame(rows, NARROW).transform(transform.dedup())
    expected = spark.createDataFrame([(T0, "a", "9"), (T0, "b", "x"), (T0, "c", None), (T1, "a", "é"),
                                      (T1, "d", "a"), (T2, "a", "only")], NARROW)
    assert_df_equality(actual, expected, ignore_row_order=True)


def test_dedup_with_order_column_keeps_the_last_row_even_if_null(spark):
    schema = StructType(NARROW.fields + [StructField("ingest_id", LongType())])
    rows = [(T0, "a", "new", 5), (T0, "a", "old", 2), (T0, "a", "zzz", 1),
            (T0, "b", "value", 1), (T0, "b", None, 3),
            (T1, "a", "x", 7)]
    actual = spark.createDataFrame(rows, schema).transform(transform.dedup(order_column="ingest_id"))
    expected = spark.createDataFrame([(T0, "a", "new"), (T0, "b", None), (T1, "a", "x")], NARROW)
    assert_df_equality(actual, expected, ignore_row_order=True)


def test_pivot_one_row_per_time_and_one_column_per_channel(spark):
    rows = [(T0, "/a/temp", "1.5"), (T0, "/a/flag", "true"), (T1, "/a/temp", "-0"),
            (T2, "/a/text", "tab\there"), (T2, "/a/flag", None)]
    columns = {"/a/temp": "/a/temp", "/a/flag": "/a/flag", "/a/text": "/a/text", "/a/unused": "/a/unused"}
    actual = spark.createDataFrame(rows, NARROW).transform(transform.pivot(columns))
    wide = StructType([StructField("created_time", TimestampType())] +
                      [StructField(c, StringType()) for c in columns.values()])
    expected = spark.createDataFrame([(T0, "1.5", "true", None, None), (T1, "-0", None, None, None),
                                      (T2, None, None, "tab\there", None)], wide)
    assert_df_equality(actual, expected, ignore_row_order=True)


def test_pivot_keeps_channels_that_differ_only_by_case_apart(spark):
    rows = [(T0, "UPPER", "1"), (T0, "upper", "2"), (T1, "upper", "3")]
    columns = {"UPPER": "UPPER", "upper": "upper"}
    actual = spark.createDataFrame(rows, NARROW).transform(transform.pivot(columns))
    wide = StructType([StructField("created_time", TimestampType()), StructField("UPPER", StringType()),
                       StructField("upper", StringType())])
    expected = spark.createDataFrame([(T0, "1", "2"), (T1, None, "3")], wide)
    assert_df_equality(actual, expected, ignore_row_order=True)


def test_pivot_names_a_channel_it_has_no_column_for(spark):
    frame = spark.createDataFrame([(T0, "known", "1"), (T0, "stranger", "2")], NARROW)
    with pytest.raises(Exception, match="stranger"):
        frame.transform(transform.pivot({"known": "known"})).collect()
