"""The report's statistics: mean, sample sd and median of a figure, and the two-sided Wilcoxon
signed-rank test of the gains across participants (scipy.stats.wilcoxon: zero differences
dropped, ties ranked by their mean rank, W = min(W+, W-); the exact distribution up to
EXACT_MAX_N differences, above that the normal approximation with tie correction and no
continuity correction)."""
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
