import hashlib

import pytest

from widen.core import naming


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


def test_table_names_are_unique_across_the_fleet_in_either_order():
    template = "t_{ship_id}"
    # S_p2 known when S needs its second part: S's part gets the other name.
    planned = naming.TableNamer(template, reserved_ships=["S", "S_p2"])
    assert [planned("S", 1), planned("S_p2", 1)] == ["t_S", "t_S_p2"]
    assert planned("S", 2) == "t_S_p2_" + md5_8("S\x002\x000")
    assert planned.notes == {("S", 2): "'t_S_p2' is the table of ship 'S_p2' part 1"}
    # S_p2 arrives after S's part took the natural name: S_p2 gets the other name, stably.
    later = naming.TableNamer(template, owners={"t_S": ("S", 1), "t_S_p2": ("S", 2)})
    first = later("S_p2", 1)
    assert first == "t_S_p2_" + md5_8("S_p2\x001\x000") and later("S_p2", 1) == first
    assert naming.TableNamer(template, owners={"t_S_p2": ("S", 2), first: ("S_p2", 1)})("S_p2", 1) == first


def test_a_taken_disambiguated_name_moves_on():
    template = "t_{ship_id}"
    taken = "t_S_p2_" + md5_8("S_p2\x001\x000")
    namer = naming.TableNamer(template, owners={"t_S_p2": ("S", 2), taken: ("X", 1)})
    assert namer("S_p2", 1) == "t_S_p2_" + md5_8("S_p2\x001\x001")


def test_delta_names_collide_by_their_storage_key():
    """In a metastore, names are compared lower-cased and hashed: the namer checks the key."""
    key = lambda name: naming.delta_dir_name(name, lower=True)  # noqa: E731
    namer = naming.TableNamer("t_{ship_id}", owners={key("t_abc"): ("abc", 1)}, key=key)
    assert namer("ABC", 1) == "t_ABC"                      # its key t_abc_<md5> differs: kept
    assert key("t_ABC") != key("t_abc")
