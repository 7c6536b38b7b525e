"""Datasets in the project's format (DATA/{participant}_{split}.pt): the synthetic demo dataset,
and windowed splits of raw CSV recordings; make_dataset.py is their CLI.

It may import engine.data (the splits of the data contract), engine.flags and engine.fileio
(folders that appear whole or not at all), numpy and torch; never the runner or the report.
"""
