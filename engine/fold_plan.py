"""A fold's plan, decided once from a job's flags: its target and base participants, which phases
run (engine.modes), where its result folder goes and the named seeds of every draw. The solo run
(engine.fold) and the pack (engine.pack) both execute plans, so a pack differs from a solo run only
in how the arithmetic is batched. No torch."""
from dataclasses import dataclass
from pathlib import Path

from engine.data import check_base, fold_index, resolve_fold
from engine.modes import Mode, mode_of
from engine.results import result_dir


@dataclass(frozen=True)
class Seeds:
    """Each draw of a fold has its own seed, so that one draw never shifts another (and a reused
    base model leaves the target phase as it is)."""
    base: int  # the base phase's start, batch order and augmentation
    base_stop: int  # which base test windows the base phase early-stops on (--base_val_pct)
    target_data: int  # which target train windows the target phase uses (--target_data_pct)
    target_val: int  # which target val windows it early-stops on (--target_val_pct)
    target: int  # the target phase's start, batch order and augmentation

    @classmethod
    def of(cls, seed, seed_finetune=None):
        """seed_finetune, when given, seeds the target phase's draws instead of seed (the base
        phase's stay: fine-tuning seeds share one base model)."""
        tuned = seed if seed_finetune is None else seed_finetune
        return cls(base=seed, base_stop=seed + 2, target_data=tuned, target_val=tuned + 3, target=tuned + 1000)


@dataclass(frozen=True)
class FoldPlan:
    fold: int
    target: str
    base_names: list  # empty without a base phase
    mode: Mode
    final: Path  # the result folder (none is published without a target phase)
    seeds: Seeds

    @property
    def who(self):
        """The fold as its one-line errors name it."""
        return f"fold {self.fold} ({self.target})"


def plan_fold(args, participants):
    """The plan of the fold these flags describe (DataError: a fold out of range, no base participant)."""
    mode = mode_of(args.mode)
    fold = fold_index(participants, args.fold)
    target, base_names = resolve_fold(participants, fold, args.n_base_participants)
    base_names = base_names if mode.base_phase else []
    check_base(args.mode, target, base_names)
    return FoldPlan(fold, target, base_names, mode, result_dir(args, fold, target),
                    Seeds.of(args.seed, getattr(args, "seed_finetune", None)))
