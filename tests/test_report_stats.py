"""The statistics of the tables against scipy and a hand-computed Holm example."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as sps

from attnopt.report.stats import holm, t_interval, verdict, welch

# values on a 1e-6 grid: a sample whose variance underflows (e.g. [0, 3.7e-116]: variance
# 1e-232) makes our t-statistic nan where scipy's is finite; that is float64 range, not Welch
samples = st.lists(st.floats(-100, 100, allow_nan=False).map(lambda x: round(x, 6)), min_size=2, max_size=12)


@pytest.mark.filterwarnings("ignore:Precision loss:RuntimeWarning")
@settings(max_examples=60, deadline=None)
@given(samples, samples)
def test_welch_matches_scipy(a, b):
    w = welch(a, b)
    if np.var(a, ddof=1) + np.var(b, ddof=1) == 0:
        return
    ref = sps.ttest_ind(a, b, equal_var=False)
    assert w.t == pytest.approx(float(ref.statistic), rel=1e-9, abs=1e-9)
    assert w.p == pytest.approx(float(ref.pvalue), rel=1e-9, abs=1e-12)
    ci = ref.confidence_interval(0.95)
    assert (w.ci_lo, w.ci_hi) == (pytest.approx(float(ci.low), rel=1e-9, abs=1e-9),
                                  pytest.approx(float(ci.high), rel=1e-9, abs=1e-9))
    assert w.diff == pytest.approx(np.mean(a) - np.mean(b), abs=1e-9)


def test_holm_by_hand():
    # p sorted 0.01, 0.02, 0.03, 0.04 (m = 4): 4·0.01 = 0.04, 3·0.02 = 0.06, 2·0.03 = 0.06, 1·0.04 → max so far 0.06
    assert holm([0.03, 0.01, 0.04, 0.02]) == pytest.approx([0.06, 0.04, 0.06, 0.06])
    assert holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])
    out = holm([0.01, float("nan"), 0.04])  # NaN is not in the family (m = 2)
    assert out[0] == pytest.approx(0.02) and math.isnan(out[1]) and out[2] == pytest.approx(0.04)


def test_missing_values_are_dropped_and_counted_and_small_cells_give_no_test():
    w = welch([80.0, 81.0, None, float("nan"), 82.0], [79.0, 78.5, 79.5])
    assert (w.n_a, w.dropped_a, w.n_b) == (3, 2, 3) and w.testable
    none = welch([80.0, None], [79.0, 78.0, 77.0])
    assert not none.testable and verdict(none, float("nan")) == "–"


def test_verdicts():
    up = welch([85, 86, 87, 86], [80, 81, 80, 79])
    assert verdict(up, up.p) == "holds" and verdict(up, up.p, higher=False) == "fails"
    flat = welch([80, 82, 81], [81, 80, 82])
    assert verdict(flat, flat.p) == "inconclusive"


def test_t_interval_matches_scipy():
    a = [81.2, 80.5, 82.0, 81.1, 80.9]
    lo, hi = t_interval(a)
    ref = sps.t.interval(0.95, len(a) - 1, loc=np.mean(a), scale=sps.sem(a))
    assert (lo, hi) == pytest.approx(ref)
