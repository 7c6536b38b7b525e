import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_training_bench_prints_both_rates_and_their_ratio():
    result = subprocess.run([sys.executable, str(REPO / "bench" / "bench_training.py"), "--quick"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    rates = [float(x) for x in re.findall(r"([\d.]+) windows/s", result.stdout)]
    ratio = float(re.search(r"ratio engine / baseline\s*:\s*([\d.]+)x", result.stdout).group(1))
    assert len(rates) == 2 and all(rate > 0 for rate in rates)
    assert abs(ratio - rates[1] / rates[0]) < 0.01 * ratio + 0.01
