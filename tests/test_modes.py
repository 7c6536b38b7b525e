"""engine/modes.py is the one place that says what a mode means: the flag registry, the fold,
the pack, the runner and the report read its facts."""
import ast
from pathlib import Path

from engine import flags, modes

REPO = Path(__file__).resolve().parent.parent


def test_the_flag_registry_takes_its_modes_from_the_table():
    assert flags.ALL_MODES == tuple(mode.name for mode in modes.TABLE)
    assert flags.MODES == ("target_only", "full_fine_tuning", "target_only_fine_tuning")  # train.py's choices
    assert flags.BASE_MODES == ("full_fine_tuning", "target_only_fine_tuning", "base_only")
    assert flags.BY_NAME["target_batch_pct"].modes == ("full_fine_tuning",)
    assert flags.BY_NAME["mode"].default == modes.DEFAULT == "full_fine_tuning"


def test_every_mode_is_coherent():
    for mode in modes.TABLE:
        assert mode.base_phase or mode.target_phase, mode.name
        assert not mode.from_base or (mode.base_phase and mode.target_phase), mode.name
        assert not mode.mixed_batches or mode.base_phase, mode.name
    assert [m for m in modes.TABLE if not modes.publishes(m.name)] == [modes.BY_NAME["base_only"]]
    assert modes.publishes(None)  # a job without a mode runs the default


def test_the_fold_and_the_pack_name_no_mode():
    # What a mode does is read from the table there; a new mode is one row, not a grep.
    for path in ("engine/fold.py", "engine/pack.py", "engine/data.py", "engine/base_cache.py"):
        strings = {node.value for node in ast.walk(ast.parse((REPO / path).read_text()))
                   if isinstance(node, ast.Constant) and isinstance(node.value, str)}
        assert not strings & set(flags.ALL_MODES), path
