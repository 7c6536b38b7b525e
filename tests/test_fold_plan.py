"""engine/fold_plan.py decides a fold once: participants, phases, result folder and the named seeds
of every draw; the solo run and the pack execute the same plan."""
import argparse
import ast
from pathlib import Path

import pytest

from engine.data import DataError
from engine.fold_plan import Seeds, plan_fold

REPO = Path(__file__).resolve().parent.parent


def flags(**given):
    values = dict(mode="full_fine_tuning", fold=1, n_base_participants="all", seed=42, experiments_dir="e",
                  prefix="p")
    return argparse.Namespace(**dict(values, **given))


def test_a_plan_names_its_participants_folder_and_seeds():
    plan = plan_fold(flags(), ["a", "b", "c"])
    assert (plan.target, plan.base_names, str(plan.final), plan.who) == ("b", ["a", "c"], "e/p/fold1_b", "fold 1 (b)")
    assert plan.seeds == Seeds(base=42, base_stop=44, target_data=42, target_val=45, target=1042)
    assert plan_fold(flags(mode="target_only"), ["a", "b", "c"]).base_names == []
    assert plan_fold(flags(n_base_participants=1), ["a", "b", "c"]).base_names == ["a"]
    with pytest.raises(DataError, match="there are none"):
        plan_fold(flags(fold=0), ["a"])


@pytest.mark.parametrize("path", ["engine/fold.py", "engine/pack.py"])
def test_the_solo_run_and_the_pack_offset_no_seed_themselves(path):
    # Every seed comes from the plan's Seeds: an offset written in one loop alone would split them.
    tree = ast.parse((REPO / path).read_text())
    offsets = [node for node in ast.walk(tree) if isinstance(node, ast.BinOp)
               and any(isinstance(side, ast.Attribute) and side.attr == "seed" for side in (node.left, node.right))]
    assert not offsets, f"{path}: line {offsets[0].lineno}" if offsets else ""
