"""This machine's requirements.txt as the environment every place a job runs must have: the
packages it pins (`name==version`), which of them an answer of the runner's check (engine.provenance:
the versions installed there) does not meet, and the shell text that installs the file there
(--sync-env: `python -m pip install -r requirements.txt` in the host's setup environment).

Only exact pins are compared (`>=` floors, the test tools, options such as --find-links are left to
pip); the whole file is what --sync-env installs. No torch here.
"""
import re
import shlex

from engine.provenance import PROJECT_DIR

REQUIREMENTS = PROJECT_DIR / "requirements.txt"  # read when asked (tests point it elsewhere)
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?\s*===?\s*([A-Za-z0-9.*+!_-]+)$")
PIP_INSTALL = "-m pip install --disable-pip-version-check --no-input --progress-bar off -r"
FAILED = "pip install -r requirements.txt failed"  # the line a Slurm preflight prints when it does


def text():
    """requirements.txt's content ('' when this checkout has none: nothing is pinned)."""
    try:
        return REQUIREMENTS.read_text()
    except OSError:
        return ""


def normal(name):
    """A package name as pip compares them (PEP 503): Tiny_Pkg and tiny-pkg are one."""
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(content):
    """{normal name: version} of the lines `name==version` (a marker, a URL or a range is not a pin)."""
    found = {}
    for line in content.splitlines():
        line = re.split(r"(^|\s)#", line)[0].strip()
        match = PIN.match(line)
        if match:
            found[normal(match[1])] = match[2]
    return found


def release(version):
    """(numbers without trailing zeros, the rest): '2.13.0+cu126' and '2.13' are one release."""
    head = re.match(r"(\d+(?:\.\d+)*)(.*)", version.split("+")[0].strip().lower())
    if not head:
        return (), version
    numbers = [int(n) for n in head[1].split(".")]
    while numbers and numbers[-1] == 0:
        numbers.pop()
    return tuple(numbers), head[2]


def meets(pin, version):
    """Whether an installed version meets a pin (`2.13.*` a prefix); a local build tag is no difference."""
    if pin.endswith(".*"):
        wanted = [int(n) for n in pin[:-2].split(".") if n.isdigit()]
        numbers = list(release(version)[0]) + [0] * len(wanted)
        return numbers[:len(wanted)] == wanted
    return release(pin) == release(version)


def unmet(pinned, packages):
    """[(name, pin, installed version or None)] of the pins an answer's packages do not meet; none when
    the answer has no packages (it could not tell)."""
    if not isinstance(packages, dict):
        return []
    return [(name, pin, packages.get(name)) for name, pin in pinned.items()
            if not packages.get(name) or not meets(pin, packages[name])]


def describe(missed):
    """'tinypkg 0.9 there, requirements.txt pins 1.0; torch not installed there, ...'"""
    return "; ".join(f"{name} {there or 'not installed'} there, requirements.txt pins {pin}"
                     for name, pin, there in missed)


def install_line(python, content):
    """Shell text that writes content to a temporary file, installs it with pip, and removes the file;
    its exit status is pip's. python: the host's, shell-quoted."""
    return (f'req=$(mktemp) && printf %s {shlex.quote(content)} > "$req" && {python} {PIP_INSTALL} "$req"; '
            f'status=$?; rm -f "$req"; exit $status')
