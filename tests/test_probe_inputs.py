"""tools/probe_inputs.py: the linear probes read a label that is there and not one that is not.

The probes back the "what does it need" measurements of docs/experiments.md (issue #31); a probe
that scored noise as information, or lost the fold order of its pooled scores, would make those
measurements wrong.  Synthetic features with the label planted in one column, against the same
features without it; and the command's one-line error on a missing cache.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.training.protocols import Fold

ROOT = Path(__file__).resolve().parents[1]


def _tool():
    spec = importlib.util.spec_from_file_location("probe_inputs", ROOT / "tools" / "probe_inputs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _folds(groups: np.ndarray) -> list[Fold]:
    return [Fold(name=str(g), held_out=str(g), task="t", train=np.flatnonzero(groups != g),
                 test=np.flatnonzero(groups == g)) for g in np.unique(groups)]


@pytest.fixture(scope="module")
def probe():
    return _tool()


def test_probe_auc_reads_a_planted_label_and_not_noise(probe):
    rng = np.random.default_rng(0)
    n = 240
    labels = (rng.random((n, 3)) < 0.3).astype(int)
    noise = rng.normal(size=(n, 10))
    planted = noise.copy()
    planted[:, :3] += 2.0 * labels                      # each AU in its own column
    folds = _folds(np.arange(n) % 4)
    assert probe.probe_auc(planted, labels, folds) > 0.85
    assert abs(probe.probe_auc(noise, labels, folds) - 0.5) < 0.1


def test_probe_uf1_reads_a_planted_class_and_not_noise(probe):
    rng = np.random.default_rng(1)
    n = 300
    y = rng.integers(0, 3, n)
    noise = rng.normal(size=(n, 8))
    planted = noise + 2.5 * np.eye(8)[y]
    folds = _folds(np.arange(n) % 10)
    assert probe.probe_uf1(planted, y, folds) > 0.85
    assert probe.probe_uf1(noise, y, folds) < 0.5


def test_frames_ac_energy_is_zero_motion_for_a_still_sequence(probe):
    rng = np.random.default_rng(2)
    still = np.repeat(rng.integers(0, 255, (1, 1, 32, 32, 3), dtype=np.uint8), 8, axis=1)
    moving = still.copy()
    moving[0, 4, 0:4, 0:4] = 255 - moving[0, 4, 0:4, 0:4]   # one block changes in one frame
    e_still = probe.frames_ac_energy(still, 32)
    e_moving = probe.frames_ac_energy(moving, 32)
    assert e_still.shape == (1, 64)
    assert np.allclose(e_still, np.log(1e-6))
    assert e_moving[0, 0] > e_still[0, 0] + 5 and np.allclose(e_moving[0, 1:], e_still[0, 1:])


@pytest.mark.parametrize("table, says", [
    ("sample_id,database,subject,emotion3\n"
     "casme2/s1/a,casme2,s1,negative\ncasme2/s2/b,casme2,s2,positive\n", "faces.h5"),
    ("sample_id,database,subject\ncasme2/s1/a,casme2,s1\n", "emotion3"),
], ids=["missing cache", "no label column"])
def test_bad_input_is_one_line(tmp_path, table, says):
    samples = tmp_path / "samples.csv"
    samples.write_text(table)
    out = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "probe_inputs.py"), "--task", "emotion",
         "--samples", str(samples), "--features", str(tmp_path / "none")],
        capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 2, out.stderr
    assert out.stderr.startswith("probe_inputs: ") and len(out.stderr.strip().splitlines()) == 1
    assert says in out.stderr
