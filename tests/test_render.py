"""float8_text (used only for a Delta source) against PostgreSQL's own double precision output."""
import random
import struct

from widen.core.values import float8_text


def test_float8_text_matches_postgresql(pg):
    rng = random.Random(7)
    values = [0.0, -0.0, float("nan"), float("inf"), float("-inf"), 0.1 + 0.2, 5e-324, -5e-324, 1e300,
              1.7976931348623157e308, 2.2250738585072014e-308, 1e15, 1e14, 999999999999999.9, 1e16,
              123456789012345.0, 1234567890123456.0, 0.0001, 0.00001, 0.00012345, 1.5, -2.5, 100.0,
              1e-4, 9.999e-5, 3.0e21, 42.0, -1e-10]
    values += [rng.uniform(-1e6, 1e6) for _ in range(300)]
    values += [struct.unpack("<d", rng.getrandbits(64).to_bytes(8, "little"))[0] for _ in range(700)]
    values += [rng.randint(-10**18, 10**18) * 10.0 ** rng.randint(-30, 30) for _ in range(300)]
    with pg.cursor() as cur:
        cur.execute("SET extra_float_digits = 1")
        cur.execute("SELECT v::text FROM unnest(%s::float8[]) WITH ORDINALITY AS u(v, i) ORDER BY i",
                    ([repr(v) if v == v else "NaN" for v in values],))
        expected = [r[0] for r in cur.fetchall()]
    assert [float8_text(v) for v in values] == expected
