"""The README and docs/ stay true to the code where a test can tell: the Files tree lists every
module and nothing that is gone, every training flag and runner option is documented, the output
lines the runner reads are in the contracts page, and every link resolves."""
import re
from pathlib import Path

import pytest

import run_distributed_training as rdt
from engine import flags
from engine import markers

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text()


def files_tree():
    return README.split("## Files", 1)[1].split("```", 2)[1]


@pytest.mark.parametrize("package", ["engine", "runner", "runner/ssh", "runner/slurm", "report", "dataset"])
def test_the_files_tree_names_every_module_of_a_package(package):
    tree = files_tree()
    for path in sorted((REPO / package).glob("*.py")):
        if path.name != "__init__.py" and package not in ("report", "dataset"):
            assert re.search(rf"(^|\s){re.escape(path.name)}(\s|$)", tree, re.M), f"{package}/{path.name}"
        elif path.name != "__init__.py":
            assert path.name in tree, f"{package}/{path.name}"


def test_the_files_tree_names_no_file_that_is_gone():
    named = set(re.findall(r"[\w]+\.py", files_tree()))
    present = {path.name for path in REPO.rglob("*.py") if ".git" not in path.parts}
    assert named <= present, named - present


def test_every_training_flag_is_in_the_training_page():
    page = (REPO / "docs" / "training.md").read_text()
    missing = [f"--{flag.name}" for flag in flags.FLAGS if f"--{flag.name}" not in page]
    assert not missing


def test_every_runner_option_is_documented():
    pages = (REPO / "docs" / "runner.md").read_text() + (REPO / "docs" / "slurm.md").read_text()
    # Each option by its dest: --no-resume's is resume; --backend is refused (the config decides).
    options = {"resume": "--no-resume"}
    options = [options.get(dest, f"--{dest.replace('_', '-')}") for dest in vars(rdt.parse_args([]))]
    missing = [option for option in options if option not in pages and option != "--backend"]
    assert not missing


def test_the_output_lines_the_runner_reads_are_in_the_contracts():
    page = (REPO / "docs" / "contracts.md").read_text()
    for tag in [value for name, value in vars(markers).items() if name.isupper()]:
        assert tag in page, tag


def test_every_relative_link_resolves():
    for page in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#\s]+)", page.read_text()):
            if not re.match(r"[a-z]+://", target):
                assert (page.parent / target).exists(), f"{page.name}: {target}"
