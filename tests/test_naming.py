import hashlib

import pytest

from widen import naming


def md5_8(text: str) -> str:
    return hashlib.md5(text.encode("utf-8")).hexdigest()[:8]


def test_names_that_fit_are_kept_verbatim():
    assert naming.column_name("/dnv-v2/vis-3-4a/411.1/C101.31/meta/qty-temperature") == \
        "/dnv-v2/vis-3-4a/411.1/C101.31/meta/qty-temperature"
    assert naming.column_name('quote"and\'apostrophe') == 'quote"and\'apostrophe'


def test_exactly_63_bytes_is_kept_and_64_is_hashed():
    at_limit = "a" * 63
    over = "a" * 64
    assert naming.column_name(at_limit) == at_limit
    assert naming.column_name(over) == "a" * 54 + "_" + md5_8(over)
    assert len(naming.column_name(over).encode()) == 63


def test_multibyte_characters_count_in_bytes_and_are_never_split():
    # 21 three-byte characters = 63 bytes: fits.
    fits = "온" * 21
    assert naming.column_name(fits) == fits
    # 22 of them = 66 bytes: cut to 18 characters (54 bytes), never in the middle of one.
    over = "온" * 22
    assert naming.column_name(over) == "온" * 18 + "_" + md5_8(over)
    # A boundary that falls inside a character: 53 ASCII + a 3-byte char would be 56 bytes.
    mixed = "x" * 53 + "é" * 10
    assert naming.column_name(mixed) == "x" * 53 + "_" + md5_8(mixed)


def test_a_channel_called_created_time_is_hashed():
    assert naming.column_name("created_time") == "created_time_" + md5_8("created_time")
    # Only the exact key name is reserved; PostgreSQL identifiers are case-sensitive when quoted.
    assert naming.column_name("Created_Time") == "Created_Time"


def test_names_differing_only_by_case_stay_distinct():
    mapping = naming.column_names(["UPPER", "upper", "Upper"])
    assert mapping == {"UPPER": "UPPER", "upper": "upper", "Upper": "Upper"}


def test_two_long_names_with_a_common_prefix_get_different_columns():
    prefix = "/dnv-v2/vis-3-4a/411.1/C101.63/S206/meta/qty-temperature/cnt-exhaust.gas/"
    a, b = prefix + "pos-inlet", prefix + "pos-outlet"
    mapping = naming.column_names([a, b])
    assert mapping[a] == prefix.encode()[:54].decode() + "_" + md5_8(a)
    assert mapping[b] == prefix.encode()[:54].decode() + "_" + md5_8(b)
    assert mapping[a] != mapping[b]


def test_table_names_follow_the_same_rule_with_part_suffix():
    template = "tbl_data_timeseries_{ship_id}"
    assert naming.table_name(template, "IMO 9300001") == "tbl_data_timeseries_IMO 9300001"
    assert naming.table_name(template, "IMO9300001", 2) == "tbl_data_timeseries_IMO9300001_p2"
    long_ship = "ship-" + "x" * 50
    full_p3 = f"tbl_data_timeseries_{long_ship}_p3"
    assert naming.table_name(template, long_ship, 3) == full_p3.encode()[:54].decode() + "_" + md5_8(full_p3)


def test_empty_names_are_refused():
    with pytest.raises(ValueError):
        naming.column_name("")
    with pytest.raises(ValueError):
        naming.table_name("t_{ship_id}", "")
