"""The engine: what one fold runs. Flags, data, models, the two phases and their CUDA-graph steps,
packs of folds in one process, the base-model cache, provenance and atomic files.

It may import itself, torch and the other requirements, the design card's top-level modules
(composed_loader, plotting) and dataset.synthetic (the demo data, made on first use); never the
runner or the report.
"""
