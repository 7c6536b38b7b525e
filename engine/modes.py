"""What each --mode means, in one table: whether it has a base phase, whether it has a target
phase (and so publishes a result folder), where the target phase starts, what its batches hold
and whether its jobs may be packed. Every mode trains all of the model's parameters. The fold, the pack, the flag registry, the base cache, the runner and the report read
these facts here instead of naming modes; a new mode is one row.

No torch: the planners read it too.
"""
from dataclasses import dataclass


@dataclass(frozen=True)
class Mode:
    name: str
    base_phase: bool  # trains (or reuses) a base model on the participants other than the target
    target_phase: bool  # trains on the target's data and publishes a result folder
    from_base: bool = False  # the target phase starts from the base model's weights
    mixed_batches: bool = False  # the target phase's batches hold base windows as well as the target's
    packable: bool = True  # its jobs may train in a pack (runner.packing); every mode so far can


TABLE = (
    Mode("target_only", base_phase=False, target_phase=True),
    Mode("full_fine_tuning", base_phase=True, target_phase=True, from_base=True, mixed_batches=True),
    Mode("target_only_fine_tuning", base_phase=True, target_phase=True, from_base=True),
    Mode("base_only", base_phase=True, target_phase=False),
)
BY_NAME = {mode.name: mode for mode in TABLE}
DEFAULT = "full_fine_tuning"  # a job that names no mode


def mode_of(name):
    """The Mode of a --mode value (None: the default)."""
    return BY_NAME[name or DEFAULT]


def names(**facts):
    """The names of the modes with these facts, in the table's order: names(base_phase=True)."""
    return tuple(mode.name for mode in TABLE if all(getattr(mode, k) == v for k, v in facts.items()))


def publishes(name):
    """Whether a run of this mode publishes a result folder (base_only stores a base model only)."""
    return mode_of(name).target_phase
