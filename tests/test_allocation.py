"""Tests for rankmix.allocation: profile parsing, layer groups, per-layer spreading."""

from __future__ import annotations

import pytest

from rankmix.allocation import group_sizes, parse_profile, per_layer

# -- parse_profile ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("profile", "expected"),
    [
        ("2468", [2, 4, 6, 8]),  # one digit per group
        ("2,4,6,8,16", [2, 4, 6, 8, 16]),  # comma-separated allows multi-digit values
        (" 2468 ", [2, 4, 6, 8]),  # surrounding whitespace is ignored
        ("5", [5]),
        (8, [8]),  # an int is a one-group profile
        ([3, 1, 2], [3, 1, 2]),  # a list is kept as given, in order
        ((1, 2), [1, 2]),
    ],
)
def test_parse_profile_valid(profile, expected):
    """Strings, ints and lists parse to their list of positive ints."""
    assert parse_profile(profile, "experts") == expected


def test_parse_profile_returns_new_list():
    """A list profile is copied, not aliased."""
    src = [1, 2, 3]
    out = parse_profile(src, "ranks")
    assert out == src
    assert out is not src


@pytest.mark.parametrize(
    ("profile", "fragment"),
    [
        ("2068", "positive"),
        ("2,-4,6", "positive"),
        (0, "positive"),
        (-3, "positive"),
        ([2, 0], "positive"),
        ([-1, 2], "positive"),
        ("", "empty"),
        ("   ", "empty"),
        ([], "list profile"),
        ("24a8", "cannot read"),
        ("2,4,x", "cannot read"),
        ("2,4,", "cannot read"),
        ("-1", "cannot read"),  # without commas every character is a digit: '-' is not
        (True, "expected a profile"),
        (False, "expected a profile"),
        ([2, "4"], "list profile"),
        ([2, 4.0], "list profile"),
        ([True, 2], "list profile"),
    ],
)
def test_parse_profile_invalid(profile, fragment):
    """Bad profiles raise ValueError naming the field and the problem."""
    with pytest.raises(ValueError, match=fragment) as err:
        parse_profile(profile, "experts")
    assert str(err.value).startswith("experts:")


@pytest.mark.parametrize("profile", [2.5, None])
def test_parse_profile_rejects_non_profile_types_with_value_error(profile):
    """Floats / None are not profiles: a clear ValueError, not a TypeError from list()."""
    with pytest.raises(ValueError, match="experts"):
        parse_profile(profile, "experts")


# -- group_sizes -----------------------------------------------------------------------------------


@pytest.mark.parametrize("n_layers", range(1, 41))
def test_group_sizes_properties(n_layers):
    """For every g <= n: sums to n, sizes differ by <= 1, non-increasing (larger first), all >= 1."""
    for n_groups in range(1, n_layers + 1):
        sizes = group_sizes(n_layers, n_groups)
        assert len(sizes) == n_groups
        assert sum(sizes) == n_layers
        assert max(sizes) - min(sizes) <= 1
        assert sizes == sorted(sizes, reverse=True)
        assert min(sizes) >= 1


@pytest.mark.parametrize(
    ("n_layers", "n_groups", "expected"),
    [
        (8, 4, [2, 2, 2, 2]),  # 8 = 4*2
        (30, 4, [8, 8, 7, 7]),  # 30 = 4*7 + 2: the first two groups take the extra layer
        (32, 4, [8, 8, 8, 8]),  # Llama-2-7B: 32 layers in 4 groups
        (7, 7, [1] * 7),
        (5, 1, [5]),
    ],
)
def test_group_sizes_examples(n_layers, n_groups, expected):
    """Hand-derived splits from divmod(n, g)."""
    assert group_sizes(n_layers, n_groups) == expected


# -- per_layer -------------------------------------------------------------------------------------


def test_per_layer_group_string_over_8_layers():
    """'2468' over 8 layers: four groups of two layers each."""
    assert per_layer("2468", 8, "experts") == [2, 2, 4, 4, 6, 6, 8, 8]


def test_per_layer_group_string_over_30_layers():
    """'2468' over 30 layers: groups of 8, 8, 7, 7 layers, shallow to deep."""
    out = per_layer("2468", 30, "ranks")
    assert out == [2] * 8 + [4] * 8 + [6] * 7 + [8] * 7


def test_per_layer_comma_string_and_int():
    """Comma strings are group profiles too; an int covers every layer."""
    assert per_layer("2,16", 4, "ranks") == [2, 2, 16, 16]
    assert per_layer(5, 6, "experts") == [5] * 6


def test_per_layer_groups_equal_layers():
    """As many groups as layers: one value per layer."""
    assert per_layer("1234", 4, "experts") == [1, 2, 3, 4]


@pytest.mark.parametrize("n_layers", [4, 5, 6, 7, 12, 30, 32])
def test_per_layer_group_string_is_contiguous_and_complete(n_layers):
    """Every layer gets a value, values stay in profile order, and each group is one contiguous run."""
    out = per_layer("2468", n_layers, "experts")
    assert len(out) == n_layers
    assert out == sorted(out)  # 2468 is increasing, so contiguous groups keep the list sorted
    runs = [v for i, v in enumerate(out) if i == 0 or out[i - 1] != v]
    assert runs == [2, 4, 6, 8]
    assert [out.count(v) for v in runs] == group_sizes(n_layers, 4)


def test_per_layer_list_kept_when_length_matches():
    """A list with one value per layer is returned as is."""
    assert per_layer([1, 3, 2], 3, "ranks") == [1, 3, 2]


@pytest.mark.parametrize("values", [[1, 2], [1, 2, 3, 4]])
def test_per_layer_list_wrong_length_names_both_counts(values):
    """A list profile whose length differs from the layer count names both numbers."""
    with pytest.raises(ValueError, match="one value per layer") as err:
        per_layer(values, 3, "ranks")
    msg = str(err.value)
    assert "3 layers" in msg
    assert f"list has {len(values)}" in msg
    assert msg.startswith("ranks:")


def test_per_layer_more_groups_than_layers():
    """More groups than layers is an error naming both counts."""
    with pytest.raises(ValueError, match="4 groups") as err:
        per_layer("2468", 3, "experts")
    assert "3 layers" in str(err.value)


def test_per_layer_propagates_parse_errors():
    """Invalid profiles fail in per_layer the same way as in parse_profile."""
    with pytest.raises(ValueError, match="positive"):
        per_layer("2068", 8, "experts")
