"""Every script in benchmarks/ runs to its end at its smallest size and prints its figures.

The benchmarks are run on demand, so nothing else would notice one that stopped working (issue
#33: ``bench_features.py`` stopped at the patches step for weeks).  Each test runs one script in a
subprocess, as a user would, and checks that it exits 0 and prints every row of its table with a
number in it; the numbers themselves are timings and are not checked (no timed tests).

A benchmark that needs a run's caches or trains a network is exempt: it says so at its top and is
listed in ``EXEMPT`` with the reason.  ``test_every_benchmark_is_run_or_exempt`` fails when a
script is neither run here nor listed, so a new benchmark cannot be left out by accident.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
NUMBER = r"-?\d+(?:\.\d+)?"

#: script → its smallest arguments, the row labels its output must hold, and the regular
#: expression of the figures that follow each label.
SMALLEST: dict[str, tuple[list[str], list[str], str]] = {
    "bench_features.py": (
        ["--samples", "2", "--workers", "1", "--repeats", "1"],
        ["faces (cold)", "faces (warm)", "raw TV-L1", "flow stage", "magnify", "patches",
         "read faces.h5", "read flow.h5", "read patches.h5"],
        rf"{NUMBER} (?:samples|pairs)/s"),
    "bench_training_step.py": (
        ["--batch", "2", "--steps", "1"],
        ["resnet18_flow", "resnet34_flow", "resnet18_mag", "late_fusion", "infusenet",
         "infusenet_image", "resnet18_flow_loso"],
        # input px, then ms per step at the quick widths, at 64-512, Adam fused, Adam loop
        rf"\d+\s+{NUMBER} ms \S+\s+{NUMBER} ms\s+{NUMBER} ms\s+{NUMBER} ms$"),
    "bench_train_dask.py": (
        ["--seeds", "1", "--workers", "1", "--threads", "1", "--epochs", "1"],
        ["local:"],
        rf"{NUMBER} s\s+dask \(1 LocalCluster workers\):\s+{NUMBER} s\s+metrics files identical: True"),
}

#: script → why it is not run here (it must say the same at its top).  None today.
EXEMPT: dict[str, str] = {
    "mutation_check.py": "runs the learning and selection tests on a scratch copy (minutes)",
    "bench_realism.py": "needs a run's caches (dvc repro flow); tests/test_realism.py runs it on "
                        "a tiny cache it writes",
    "bench_profiles.py": "builds full-profile CASME II stand-ins (640x480 frames at 200 fps) "
                         "and runs faces and flow on them: tens of minutes on 2 cores",
}


def _scripts() -> list[str]:
    return sorted(p.name for p in BENCHMARKS.glob("*.py") if p.name != "__init__.py")


def test_every_benchmark_is_run_or_exempt():
    scripts = set(_scripts())
    assert scripts, f"no benchmark scripts found in {BENCHMARKS}"
    assert not set(SMALLEST) & set(EXEMPT)
    missing = scripts - set(SMALLEST) - set(EXEMPT)
    assert not missing, (f"benchmarks not run by tests/test_benchmarks.py: {sorted(missing)}; "
                         "add each to SMALLEST, or to EXEMPT if it needs a run's caches or trains")
    gone = (set(SMALLEST) | set(EXEMPT)) - scripts
    assert not gone, f"listed here but not in benchmarks/: {sorted(gone)}"
    for name in EXEMPT:
        doc = ast.get_docstring(ast.parse((BENCHMARKS / name).read_text())) or ""
        assert "exempt" in doc.lower(), (f"benchmarks/{name} is exempt from the benchmark test "
                                         "but its docstring does not say so")


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(SMALLEST))
def test_benchmark_runs_to_its_end(script, faces_dir, landmarker_model):
    args, rows, figures = SMALLEST[script]
    # One thread each for torch and OpenCV's helpers: the figures are not checked, and two
    # threads oversubscribe a busy 2-core machine (tests/conftest.py).
    env = dict(os.environ, PYTHONPATH=str(ROOT), MER_FACES_DIR=str(faces_dir),
               MER_LANDMARKER_MODEL=str(landmarker_model), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(BENCHMARKS / script), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, (f"benchmarks/{script} {' '.join(args)} exited "
                                  f"{proc.returncode}:\n{proc.stderr[-3000:]}")
    lines = proc.stdout.splitlines()
    for label in rows:
        pattern = re.compile(rf"^{re.escape(label)}\s+{figures}")
        assert any(pattern.match(line) for line in lines), (
            f"benchmarks/{script}: no row '{label}' followed by a figure in its output:\n"
            f"{proc.stdout}")
