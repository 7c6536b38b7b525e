"""The personalization report: finished fold folders read into per-fold, per-participant (seeds are
replicates) and per-configuration tables with the Wilcoxon test across participants, per-class tables
of recognizers, comparisons between configurations (--compare) and data efficiency, as Markdown, CSV,
JSON, LaTeX, one HTML page and plots.

It may import engine.flags, engine.modes and engine.fileio, the top-level plotting module, numpy, scipy and
matplotlib; never the runner. summarize_results.py is its CLI; the runner prints its headline.
"""
