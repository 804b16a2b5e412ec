"""Statistics over seeds: spreads and Welch's interval, against their formulas."""
import math
import warnings

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fn_trainer.app.statistics import Difference, format_difference, format_spread, spread, welch_difference

T_975 = {2: 4.302652729911275, 4: 2.7764451051977987}  # Student's t 0.975 quantiles, from tables


def test_spread_is_the_mean_and_sample_standard_deviation():
    s = spread([0.80, 0.82, 0.84])
    assert s.n == 3 and s.mean == pytest.approx(0.82, abs=1e-15) and s.std == pytest.approx(0.02, abs=1e-15)
    assert spread([0.5]).std is None and format_spread(spread([0.5])) == "0.5000"
    assert format_spread(s) == "0.8200 ± 0.0200"


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_non_finite_accuracy_is_refused_not_called_within_seed_noise(bad):
    with pytest.raises(ValueError, match="spread needs finite values, got "):
        spread([0.8, bad, 0.82])
    with pytest.raises(ValueError, match="spread needs finite values"):
        welch_difference([0.1, 0.1, 0.11], [0.8, bad, 0.82])


def test_welch_interval_with_equal_variances_and_sizes_uses_2n_minus_2_degrees_of_freedom():
    a, b = [0.90, 0.91, 0.92], [0.85, 0.86, 0.87]
    d = welch_difference(a, b)
    se = math.sqrt(0.01 ** 2 / 3 * 2)  # both sample stds are 0.01; df = 4 when they are equal
    assert d.diff == pytest.approx(0.05, abs=1e-12)
    assert d.low == pytest.approx(0.05 - T_975[4] * se, abs=1e-9) and d.high == pytest.approx(0.05 + T_975[4] * se, abs=1e-9)
    assert d.exceeds_noise and "exceeds seed noise" in format_difference(d)


def test_welch_interval_with_one_noisy_side_has_its_degrees_of_freedom():
    a, b = [0.0, 0.5, 1.0], [0.3, 0.3, 0.3]  # all variance on one side: df = n_a - 1 = 2
    d = welch_difference(a, b)
    se = math.sqrt(0.25 / 3)
    assert d.low == pytest.approx(0.2 - T_975[2] * se, abs=1e-9) and not d.exceeds_noise
    assert "within seed noise" in format_difference(d)


def test_a_side_of_equal_values_gives_its_interval_without_a_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a printed warning would reach the command line's stderr
        d = welch_difference([1.0, 1.0, 1.0], [0.2, 0.3, 0.4])
    se = math.sqrt(0.01 / 3)  # only the second side varies: df = 2
    assert d.low == pytest.approx(0.7 - T_975[2] * se, abs=1e-9) and d.high == pytest.approx(0.7 + T_975[2] * se, abs=1e-9)


def test_one_seed_gives_no_interval_and_says_so():
    d = welch_difference([0.9], [0.8, 0.85])
    assert d.low is None and d.exceeds_noise is None and "no interval" in format_difference(d)



@pytest.mark.parametrize("a, b", [([0.5, 0.5], [0.25, 0.25]), ([0.1] * 3, [0.1025] * 3)])  # 0.1 * 3 / 3 != 0.1
def test_no_spread_on_either_side_gives_no_interval_and_says_so(a, b):
    d = welch_difference(a, b)
    assert d.low is None and d.exceeds_noise is None
    assert format_difference(d) == (f"{d.diff:+.4f} (no interval: every seed gave the same value on both sides, "
                                    "so seed noise is not measured)")


@pytest.mark.parametrize("d, printed", [
    # the computed interval excludes 0 by 3.7e-5: printed as 0.0000, it does not, nor does its verdict
    (Difference(0.002, 3.7e-5, 0.004), "+0.0020 [+0.0000, +0.0040], within seed noise"),
    (Difference(0.0027, -1e-6, 0.0054), "+0.0027 [-0.0001, +0.0054], within seed noise"),
    (Difference(0.0123, 0.00501, 0.01959), "+0.0123 [+0.0050, +0.0196], exceeds seed noise"),
    (Difference(-0.0123, -0.01959, -0.00501), "-0.0123 [-0.0196, -0.0050], exceeds seed noise"),
])
def test_the_printed_interval_holds_the_computed_one_and_its_verdict_agrees(d, printed):
    assert format_difference(d) == printed


@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(0, 1), min_size=2, max_size=6), st.lists(st.floats(0, 1), min_size=2, max_size=6))
def test_the_interval_contains_the_difference_and_flips_with_the_sides(a, b):
    d, e = welch_difference(a, b), welch_difference(b, a)
    if d.low is None:  # neither side varies
        assert len(set(a)) == len(set(b)) == 1 and e.low is None
        return
    assert d.low - 1e-12 <= d.diff <= d.high + 1e-12
    assert e.diff == pytest.approx(-d.diff, abs=1e-12) and e.low == pytest.approx(-d.high, abs=1e-9)
