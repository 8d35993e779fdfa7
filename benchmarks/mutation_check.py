"""Mutation check: do the tests catch a broken method?  Run on demand, not in CI.

Copies the repository's files (tracked and untracked, not ignored) into a scratch folder, checks
that the chosen tests pass there unchanged, then applies one named break at a time to the copy
(a text replacement in one or more source files, undone afterwards) and runs the tests that
should catch it.  A break is *caught* when at least one of them fails.  The working tree is never
modified.

Exempt from ``tests/test_benchmarks.py``: it runs the test suite itself (minutes), so the
benchmark test does not run it.

Breaks (:data:`BREAKS`):

* ``shuffled_labels``: every fold trains on its training labels permuted across its samples;
* ``random_scores``: the network's output is replaced by uniform noise (probabilities) at every
  prediction, validation and test;
* ``test_fold_selection``: ``selection: inner_val`` scores its epochs on the test fold;
* ``test_fold_validation_rows``: the runner hands the test rows to the trainer as validation rows;
* ``no_restore``: the selected epoch's weights are not restored before the test prediction;
* ``wrong_normalisation``: ``flow_norm: sample`` divides by 1000 instead of the 99th percentile;
* ``broken_prevalence``: the prevalence baseline draws with probability 0.5, not the training
  prevalence;
* ``ac4au_static_sequence``: AC4AU's input sequence is its onset frame repeated, so FRD's AC part
  holds no motion (the apex-free method must learn from the frames' changes).

Usage::

    python benchmarks/mutation_check.py                  # every break
    python benchmarks/mutation_check.py --break random_scores --break no_restore
    python benchmarks/mutation_check.py --list
    python benchmarks/mutation_check.py --break shuffled_labels -k "ac4au or mimicking"

Prints, per break, the tests that failed (caught it) and those that passed; exits 0 when every
break is caught, 1 when one is not, 2 when a break no longer applies to the source (its text was
not found exactly once) or the unchanged copy already fails a test (such a test is reported and
left out of the attribution).  Each run of the learning
tests takes a few minutes on 2 cores: the whole check is roughly the suite's learning part
(tests/test_learning.py) three times plus a few short tests.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

LEARNING = ("tests/test_learning.py",
            "tests/test_gam.py::test_loso_run_writes_the_metrics_schema_and_learns_the_synthetic_classes")
SELECTION = ("tests/test_trainer.py::test_inner_val_selects_on_validation_only_and_restores_that_epoch",
             "tests/test_trainer.py::test_loso_with_inner_validation")


@dataclass(frozen=True)
class Break:
    """One named break: text replacements ``(file, old, new)`` and the tests meant to catch it."""

    description: str
    edits: tuple[tuple[str, str, str], ...]
    tests: tuple[str, ...]


BREAKS: dict[str, Break] = {
    "shuffled_labels": Break(
        "each fold trains on its training labels permuted across its training samples",
        (("pipeline/training/trainer.py",
          "    train_ds = store.dataset(train, targets, extras)\n",
          "    shuffled = np.array(targets, copy=True)\n"
          "    shuffled[train] = targets[np.random.default_rng(ctx.seed).permutation(train)]\n"
          "    train_ds = store.dataset(train, shuffled, extras)\n"),),
        LEARNING),
    "random_scores": Break(
        "the network's output replaced by uniform noise at every prediction",
        (("pipeline/training/trainer.py",
          "            chunks.append(probs.cpu().double().numpy())\n",
          "            probs = torch.rand(probs.shape, dtype=torch.float64)\n"
          "            probs = probs if task == \"au\" else probs / probs.sum(dim=1, keepdim=True)\n"
          "            chunks.append(probs.numpy())\n"),),
        LEARNING),
    "test_fold_selection": Break(
        "inner_val scores each epoch on the test fold",
        (("pipeline/training/trainer.py",
          "        val_loader = _loader(store.dataset(validation, targets, extras),",
          "        val_loader = _loader(store.dataset(test, targets, extras),"),
         ("pipeline/training/trainer.py",
          "                row[\"val_score\"] = _score(ctx.task, targets[validation], val_scores,",
          "                row[\"val_score\"] = _score(ctx.task, targets[test], val_scores,")),
        SELECTION),
    "test_fold_validation_rows": Break(
        "the runner passes the test rows as the validation rows",
        (("pipeline/training/run.py",
          "        validation=None if validation_rows is None else store_pos[validation_rows],",
          "        validation=None if validation_rows is None else store_pos[fold.test[test_avail]],"),),
        SELECTION),
    "no_restore": Break(
        "the selected epoch's weights are not restored (the last epoch's are used)",
        (("pipeline/training/trainer.py",
          "        model.load_state_dict(best[2])\n",
          ""),),
        SELECTION),
    "wrong_normalisation": Break(
        "flow_norm: sample divides by 1000 instead of the 99th percentile",
        (("pipeline/training/data.py",
          "        s_uv = float(np.quantile(mag, quantile)) + 1e-6\n"
          "        s_e = float(np.quantile(np.abs(out[..., 2]), quantile)) + 1e-6\n",
          "        s_uv = 1000.0\n"
          "        s_e = 1000.0\n"),),
        ("tests/test_trainer.py::test_flow_preprocessing_and_flip",)),
    "ac4au_static_sequence": Break(
        "AC4AU sees its onset frame repeated l times (no motion: FRD's F^AC is 0)",
        (("pipeline/training/methods_ac4au.py",
          "    return preprocess_image(frames, size)\n",
          "    return preprocess_image(np.repeat(frames[:1], len(frames), axis=0), size)\n"),),
        ("tests/test_learning.py::test_method_learns_the_synthetic_labels[ac4au]",)),
    "broken_prevalence": Break(
        "the prevalence baseline draws AUs with probability 0.5",
        (("pipeline/training/baselines.py",
          "            return scores, (rng.random((n, len(self.p))) < self.p).astype(np.int64)\n",
          "            return scores, (rng.random((n, len(self.p))) < 0.5).astype(np.int64)\n"),),
        ("tests/test_trainer.py::test_prevalence_baseline_draws_with_the_training_prevalence",)),
}


class BreakDoesNotApply(RuntimeError):
    """A break's text is not found exactly once: the source changed, update :data:`BREAKS`."""


def project_files(repo: Path) -> list[str]:
    """Tracked and untracked (not ignored) files of ``repo``, relative paths."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                         cwd=repo, capture_output=True, check=True)
    return [p for p in out.stdout.decode().split("\0") if p and (repo / p).is_file()]


def scratch_copy(repo: Path, dest: Path) -> None:
    for rel in project_files(repo):
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(repo / rel, target)


def apply(root: Path, brk: Break) -> dict[Path, str]:
    """Apply ``brk``'s edits under ``root``; returns the original texts to restore."""
    originals: dict[Path, str] = {}
    for rel, old, new in brk.edits:
        path = root / rel
        text = originals.get(path) or path.read_text()
        originals.setdefault(path, text)
        current = path.read_text()
        if current.count(old) != 1:
            raise BreakDoesNotApply(f"{rel}: the text to replace occurs {current.count(old)} times, "
                                    f"not once: {old.strip()[:70]!r}")
        path.write_text(current.replace(old, new))
    return originals


def restore(originals: dict[Path, str]) -> None:
    for path, text in originals.items():
        path.write_text(text)


def run_tests(root: Path, tests: tuple[str, ...], report: Path,
              select: str | None = None) -> dict[str, bool]:
    """Run ``tests`` in ``root`` (``select``: a pytest ``-k`` expression); returns
    ``{test id: passed}`` (skipped tests count as passed)."""
    env = dict(os.environ, PYTHONPATH=str(root), PYTHONDONTWRITEBYTECODE="1", TQDM_DISABLE="1")
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                    "-o", "junit_family=xunit1", f"--junitxml={report}",
                    *(["-k", select] if select else []), *tests], cwd=root, env=env,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    if not report.is_file():
        raise RuntimeError(f"pytest wrote no report for {tests}")
    outcome = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        outcome[name] = case.find("failure") is None and case.find("error") is None
        props = {p.get("name"): p.get("value") for p in case.iter("property")}
        if props:  # e.g. a learning test's score and bar
            print(f"    {name}: {'passed' if outcome[name] else 'FAILED'} "
                  + " ".join(f"{k} {v}" for k, v in props.items()), flush=True)
    report.unlink()
    return outcome


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--break", dest="breaks", action="append", choices=sorted(BREAKS),
                    help="run only this break (repeatable; default: all)")
    ap.add_argument("--list", action="store_true", help="list the breaks and exit")
    ap.add_argument("-k", dest="select", metavar="EXPR",
                    help="only the tests matching this pytest -k expression")
    ap.add_argument("--skip-baseline", action="store_true",
                    help="do not first check that the unchanged copy passes the tests")
    args = ap.parse_args(argv)
    if args.list:
        for name, brk in BREAKS.items():
            print(f"{name}: {brk.description}")
        return 0
    names = sorted(args.breaks or BREAKS, key=lambda n: BREAKS[n].tests == LEARNING)  # cheap first
    with tempfile.TemporaryDirectory(prefix="mutation_check.") as tmp:
        root = Path(tmp) / "repo"
        scratch_copy(REPO, root)
        report = Path(tmp) / "report.xml"
        failing: list[str] = []
        if not args.skip_baseline:
            tests = tuple(dict.fromkeys(t for n in names for t in BREAKS[n].tests))
            baseline = run_tests(root, tests, report, args.select)
            failing = [t for t, ok in baseline.items() if not ok]
            print(f"baseline (no break): {len(baseline) - len(failing)} of {len(baseline)} "
                  "tests pass", flush=True)
            if not baseline:
                print("no test ran")
                return 2
            for t in failing:  # they cannot tell a break: left out below, exit status 2
                print(f"  fails unchanged: {t}")
        uncaught = []
        for name in names:
            brk = BREAKS[name]
            try:
                originals = apply(root, brk)
            except BreakDoesNotApply as exc:
                print(f"{name}: does not apply ({exc})")
                return 2
            try:
                outcome = run_tests(root, brk.tests, report, args.select)
            finally:
                restore(originals)
            outcome = {t: ok for t, ok in outcome.items() if t not in failing}
            caught = sorted(t for t, ok in outcome.items() if not ok)
            missed = sorted(t for t, ok in outcome.items() if ok)
            status = "caught" if caught else "UNCAUGHT"
            print(f"\n{name} ({brk.description}): {status} by {len(caught)} of {len(outcome)}",
                  flush=True)
            for t in caught:
                print(f"  fails  {t}")
            for t in missed:
                print(f"  passes {t}")
            if not caught:
                uncaught.append(name)
    print(f"\n{len(names) - len(uncaught)} of {len(names)} breaks caught"
          + (f"; uncaught: {', '.join(uncaught)}" if uncaught else ""))
    if failing:
        print(f"{len(failing)} tests failed without a break: not counted")
        return 2
    return 1 if uncaught else 0


if __name__ == "__main__":
    raise SystemExit(main())
