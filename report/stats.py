"""The report's statistics: mean, sample sd and median of a figure, and the two-sided Wilcoxon
signed-rank test of the gains across participants (scipy.stats.wilcoxon: zero differences
dropped, ties ranked by their mean rank, W = min(W+, W-); the exact distribution up to
EXACT_MAX_N differences, above that the normal approximation with tie correction and no
continuity correction). For --compare, the paired tests of two configurations (scipy.stats
ttest_rel, wilcoxon, shapiro, bootstrap), the effect sizes and Holm's adjustment."""
import math
import warnings

import numpy as np
from scipy import stats

from report.runs import as_number

EXACT_MAX_N = 20


def describe(values):
    """(mean, sample sd, median) of the values that are numbers; None where undefined."""
    xs = np.array([v for v in map(as_number, values) if v is not None])
    if len(xs) == 0:
        return None, None, None
    sd = float(xs.std(ddof=1)) if len(xs) > 1 else None
    return float(xs.mean()), sd, float(np.median(xs))


def wilcoxon(differences):
    """Two-sided Wilcoxon signed-rank test: (W, p, n nonzero differences)."""
    d = np.round(np.asarray(differences, dtype=float), 12)  # float noise must not make a tie a change
    n = int((d != 0).sum())
    if n == 0:
        return 0.0, 1.0, 0
    result = stats.wilcoxon(d, zero_method="wilcox", correction=False, alternative="two-sided",
                            method="exact" if n <= EXACT_MAX_N else "approx")
    return float(result.statistic), float(min(result.pvalue, 1.0)), n


# --compare: the mean difference's confidence interval is a seeded bootstrap over participants.
BOOTSTRAP_SEED = 0
BOOTSTRAP_RESAMPLES = 9999
CONFIDENCE = 0.95


def finite(value):
    """A float, or None for None, NaN and infinities (what scipy returns where a figure is undefined)."""
    return None if value is None or not math.isfinite(value) else float(value)


def bootstrap_ci(differences):
    """95 % BCa interval of the mean difference (scipy.stats.bootstrap, seeded); (None, None) below
    two differences; the difference itself when all are equal (every resample is that value)."""
    d = np.asarray(differences, dtype=float)
    if len(d) < 2:
        return None, None
    if np.all(d == d[0]):
        return float(d[0]), float(d[0])
    with warnings.catch_warnings():  # a degenerate BCa interval is NaN, and becomes blank
        warnings.simplefilter("ignore")
        result = stats.bootstrap((d,), np.mean, n_resamples=BOOTSTRAP_RESAMPLES, confidence_level=CONFIDENCE,
                                 method="BCa", rng=np.random.default_rng(BOOTSTRAP_SEED))
    return finite(result.confidence_interval.low), finite(result.confidence_interval.high)


def rank_biserial(differences):
    """Matched-pairs rank-biserial correlation (W+ - W-) / (W+ + W-) over the nonzero differences
    ranked by size (ties share their mean rank), None when all are zero."""
    d = np.asarray(differences, dtype=float)
    d = d[d != 0]
    if len(d) == 0:
        return None
    ranks = stats.rankdata(np.abs(d))
    plus, minus = ranks[d > 0].sum(), ranks[d < 0].sum()
    return float((plus - minus) / (plus + minus))


def paired_tests(first, second):
    """Statistics of second - first over paired values (one pair per participant): the mean
    difference and its CI, the paired t-test, the Wilcoxon signed-rank test, Shapiro-Wilk's p of
    the differences, Cohen's d_z and the rank-biserial correlation; None where undefined (the
    t-test, Shapiro-Wilk and d_z need differences that are not all equal, Shapiro-Wilk three)."""
    a, b = np.asarray(first, dtype=float), np.asarray(second, dtype=float)
    d = b - a  # as scipy's paired tests take them, so the bootstrap agrees with scipy's to the bit
    tied = np.round(d, 12)  # float noise must not make a tie a difference, nor equal differences spread
    n = len(d)
    varies = n > 1 and not np.all(tied == tied[0])
    spread = float(d.std(ddof=1)) if varies else 0.0
    out = {"n": n, "mean_first": finite(a.mean()) if n else None, "mean_second": finite(b.mean()) if n else None,
           "mean_difference": finite(d.mean()) if n else None}
    out["ci_low"], out["ci_high"] = bootstrap_ci(d if varies else tied)
    t_test = stats.ttest_rel(b, a) if varies else None
    out["ttest_t"] = finite(t_test.statistic) if t_test else None
    out["ttest_p"] = finite(t_test.pvalue) if t_test else None
    out["wilcoxon_w"], out["wilcoxon_p"], out["wilcoxon_n"] = wilcoxon(tied) if n else (None, None, 0)
    out["shapiro_p"] = finite(stats.shapiro(d).pvalue) if n >= 3 and varies else None
    out["cohen_dz"] = float(d.mean() / spread) if varies else None
    out["rank_biserial"] = rank_biserial(tied)
    return out


def holm(pvalues):
    """Holm's step-down adjustment of a family of p-values (None ones stay None and are not counted)."""
    known = sorted((p, i) for i, p in enumerate(pvalues) if p is not None)
    adjusted, running = [None] * len(pvalues), 0.0
    for rank, (p, i) in enumerate(known):
        running = max(running, min(1.0, (len(known) - rank) * p))  # never below a smaller p's adjustment
        adjusted[i] = running
    return adjusted
