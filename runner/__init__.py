"""The runner: what fans folds out. The jobs and the cluster config checked, the grid, the planner
(phases, base-key dependencies, packs, retries, ledger, report) above two backends, ssh/ and slurm/.

It may import engine.flags, engine.fileio, engine.base_cache (the base key and entries),
engine.provenance (code and data fingerprints), engine.data (participant names, for the grid and
the jobs' result folders), engine.results (who may replace a result folder), engine.modes (what a mode means), engine.markers (the lines a trainer prints),
dataset.synthetic (the demo data, for the grid) and report.text (the headline); never a fold's internals.
"""
