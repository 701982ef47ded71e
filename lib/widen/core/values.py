"""Value rendering and row validation rules, expressed once (docs/design.md, "Value rendering", "Bad rows").

Pure: the rules as data and Python. Their SQL form (``widen.pg.render``) and Spark form
(``widen.sources.delta``) follow the same order and the same reasons.

The rendered value is computed in the *source* SQL, so a wide cell is byte for byte what PostgreSQL
prints; Java and Python print doubles differently and must never re-render one. The one exception
is a source that is not PostgreSQL (a Delta table of narrow rows): ``float8_text`` reproduces
PostgreSQL's ``double precision`` output for it, tested against the server itself.
"""
from __future__ import annotations

import math
from decimal import Decimal

VALUE_FORMATS = ("Decimal", "Integer", "String", "Boolean")

#: reject reasons, in the order they are checked
REASON_NULL_SHIP = "null ship_id"
REASON_EMPTY_SHIP = "empty ship_id"
REASON_NULL_CHANNEL = "null data_channel_id"
REASON_EMPTY_CHANNEL = "empty data_channel_id"
REASON_NULL_TIME = "null created_time"
REASON_NULL_FORMAT = "null value_format"
REASON_UNKNOWN_FORMAT = "unknown value_format"

#: a rejected row travels as one text array (PostgreSQL's text[] literal): the reason, then these
#: columns of the raw row as PostgreSQL prints them (and reads them back exactly); the sources
#: build it, the ledger unpacks it by position into ``rejects``
RAW_REJECT_FIELDS = ("reason", "data_channel_id", "value_format", "double_v", "long_v", "str_v", "bool_v")
#: the columns of a narrow row as every source hands it on (stream micro-batches, repairs):
#: ``reject`` is NULL for a valid row, else the raw-reject text array; ``value_format`` as read (a
#: typed column meeting a format it was not chosen for turns text: ``core.typed``)
ROW_COLUMNS = ("ship_id", "data_channel_id", "created_time", "value", "reject", "order_key", "value_format")
ROW_SPARK_SCHEMA = ("ship_id string, data_channel_id string, created_time timestamp, value string, "
                    "reject string, order_key long, value_format string")
#: a stream source that re-reads rows (not exactly once) also hands on this column: the time the
#: stream's watermark runs on (created_time, capped so a reading from the future cannot move it)
EVENT_TIME = "widen_event_time"
#: a backfill chunk's narrow rows as its reader hands them to its writer (``kernels.chunk_columns``):
#: ``created_us``, ``channel`` (the channel's position in the writer's list, or one of the two codes
#: below), ``value`` (the rendered value; the channel's name for an unknown channel; the raw-reject
#: text for a rejected row) and, with an order column, ``order_key``
UNKNOWN_CHANNEL = -1
REJECTED_ROW = -2
#: a valid reading of a typed channel in a format its column was not chosen for travels as
#: ``OTHER_FORMAT - position`` (its value as usual): the writer turns that column to text first
OTHER_FORMAT = -3


def float8_text(value: float | None) -> str | None:
    """``value::text`` as PostgreSQL 12+ prints a double (``extra_float_digits`` = 1, the default).

    The shortest correctly rounded digits strictly inside the value's rounding interval (Ryu, as
    PostgreSQL uses it, does not accept the interval's bounds; Python's ``repr`` does, so it is one
    digit short now and then), written the way PostgreSQL's ``float8out`` writes them: fixed
    notation for decimal exponents -4..14, otherwise ``d.ddde±XX``; ``NaN``, ``Infinity``,
    ``-Infinity``, ``-0``.
    """
    if value is None:
        return None
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    if value == 0:
        return "-0" if math.copysign(1.0, value) < 0 else "0"
    sign, digits, exponent = _shortest(value).normalize().as_tuple()
    assert isinstance(exponent, int)          # finite: NaN and infinities returned above
    text = "".join(map(str, digits))
    point = len(text) + exponent              # position of the decimal point in ``text``
    scientific = point - 1
    minus = "-" if sign else ""
    if -4 <= scientific < 15:
        if point <= 0:
            return f"{minus}0.{'0' * -point}{text}"
        if point >= len(text):
            return f"{minus}{text}{'0' * (point - len(text))}"
        return f"{minus}{text[:point]}.{text[point:]}"
    mantissa = text[0] + (f".{text[1:]}" if len(text) > 1 else "")
    return f"{minus}{mantissa}e{'-' if scientific < 0 else '+'}{abs(scientific):02d}"


def _shortest(value: float) -> Decimal:
    exact = Decimal(value)
    below, above = math.nextafter(value, -math.inf), math.nextafter(value, math.inf)
    low = (exact + Decimal(below)) / 2 if not math.isinf(below) else exact - (Decimal(above) - exact) / 2
    high = (exact + Decimal(above)) / 2 if not math.isinf(above) else exact + (exact - Decimal(below)) / 2
    low, high = min(low, high), max(low, high)
    candidate = Decimal(repr(value))
    if low < candidate < high:
        return candidate
    for places in range(len(candidate.normalize().as_tuple().digits), 17):
        candidate = Decimal(f"{value:.{places}e}")
        if low < candidate < high:
            return candidate
    return Decimal(f"{value:.16e}")
