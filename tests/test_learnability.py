"""STANDIN.md, "Learnable, not trivial": on stand-in data the flow baselines beat the constant
predictors clearly and stay clearly below perfect, on both protocols, and not only for the
default stand-in seed: the stand-in here is built with seed :data:`STANDIN_SEED` (7; the
pipeline's default is 0), so a lucky label draw of seed 0 cannot carry the test.

Chains the real stage library functions: the stand-in builder → index → faces (MediaPipe) →
TV-L1 flow (onset → apex only, small crops) → the trainer under CD6ME leave-one-database-out
(ResNet18 on flow) and under LOSO (SSSNet, composite 3-class task), with the constant predictors
through the same runner.

The shared ``tiny`` stand-in (tests/conftest.py: 6 samples per database, 36 for CD6ME) is too
small for a network trained from scratch to learn anything (ResNet18 scored below the
all-positive predictor on it), so this test builds its own small profile: the ``tiny`` look and
timing with :data:`N_SAMPLES` samples of :data:`N_SUBJECTS` subjects in each CD6ME database and
:data:`N_LOSO` in each LOSO database (CASME II, SAMM, SMIC-HS: with fewer, LOSO scores measure the
label draw, not the method).  With ~100 training samples per fold the unweighted BCE of 10
epochs learns to predict the rare AUs absent (F1 0.10, below all-positive's 0.17); balanced
positive weights and 20 epochs of the quick configuration's ResNet18 (layers 64/96/128/192 wide)
give 0.216 at seed 7 (all-positive 0.171: the CD6ME margin asked for is 0.02, with a mean AU ROC
AUC above 0.55; measured 0.562); SSSNet on the composite LOSO task gives UF1 0.335
at seed 7 (majority 0.245, prevalence draws 0.290; margin 0.03).  Measured on one thread, the run's
own determinism setting.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import training_synth

from pipeline.params import load, method_params, section
from pipeline.training.data import read_samples
from pipeline.training.run import RunPaths, run_method

REPO = Path(__file__).resolve().parents[1]
CROP = 64          # faces crop and flow size (px) for speed; the quick configuration uses 112
#: the quick configuration's SSSNet (params.yaml, methods.sssnet: 64 px, Adam 3e-3 over one cycle
#: of 6 epochs, hflip), on one thread
SSSNET = {**method_params(load(REPO / "params.yaml"), "sssnet"), "device": "cpu",
          "torch_threads": 1, "save_checkpoints": False, "final_model": False,
          "loss": {"pos_weight": "balanced"}, "epochs": 12}
AUC_MARGIN = 0.03  # above the random guesser's 99th percentile (module docstring)
F1_MARGIN = 0.02
N_SAMPLES = 20     # per CD6ME database
N_LOSO = 36        # per LOSO database (casme2 and samm are in both protocols)
N_SUBJECTS = 4
STANDIN_SEED = 7   # not the pipeline's default 0
LOSO_KEYS = ("casme2", "samm", "smic")


@pytest.fixture(scope="module")
def tiny_flow(faces_dir, landmarker_model, tmp_path_factory):
    """samples.csv and flow.h5 of a small stand-in, through the real stage functions."""
    from dataclasses import replace

    from pipeline.databases.index import IndexOptions, build_index, resolve_roots, write_index
    from pipeline.features.faces import load_index, run_faces
    from pipeline.features.flow import run_flow
    from pipeline.standin import build_standin
    from pipeline.standin.profiles import CD6ME_KEYS, Profile, get_profile

    tiny = get_profile("tiny")
    profile = Profile(name="learnability", amplitude_px=tiny.amplitude_px, contact_samples=1,
                      macro_duration_s=tiny.macro_duration_s,
                      databases={k: replace(d, n_subjects=N_SUBJECTS,
                                            n_samples=N_LOSO if k in LOSO_KEYS else N_SAMPLES)
                                 for k, d in tiny.databases.items()})
    params = load(REPO / "params.yaml")
    work = tmp_path_factory.mktemp("learnability")
    keys = [*CD6ME_KEYS, "smic"]
    build_standin(work / "standin", profile, seed=STANDIN_SEED, faces_dir=faces_dir,
                  landmarker_model=landmarker_model, n_jobs=1, databases=keys,
                  contact_sheets=False)
    data = {**section("data", params), "source": "standin", "databases": keys}
    result = build_index(resolve_roots(data, work / "standin"),
                         IndexOptions.from_params(section("index", params)))
    write_index(result, work / "index")
    csv = work / "index" / "samples.csv"
    serial = {"backend": "local", "n_jobs": 1, "scheduler": None}
    faces = {**section("faces", params), "sizes": [CROP], "sequence_size": CROP,
             "landmarker_model": str(landmarker_model)}
    run_faces(load_index(csv), faces, work / "faces.h5", work / "faces_failures.csv", serial,
              source=csv)
    flow = {**section("flow", params), "size": CROP, "pairs": ["onset_apex"]}
    feats = work / "features"
    feats.mkdir()
    run_flow(work / "faces.h5", flow, feats / "flow.h5", work / "flow_failures.csv", serial)
    return read_samples(csv), feats, work


def _run(name: str, params: dict, tiny_flow) -> dict:
    samples, feats, work = tiny_flow
    out = work / "out"
    paths = RunPaths(out / "models" / name, out / "metrics" / name, out / "metrics" / f"{name}.json")
    return run_method(name, params, samples, feats, paths, "standin-small", seed=0)


def _chance_q99(samples, metric: str) -> float:
    """99th percentile of a uniform random guesser's CD6ME ``metric`` on these labels."""
    return float(np.quantile(training_synth.chance_scores(samples, metric=metric), 0.99))


@pytest.mark.slow
def test_sssnet_cd6me_beats_chance_and_constants_and_is_not_perfect(tiny_flow):
    base = {"task": "au", "protocol": "cd6me"}
    constants = [_run(r, {**base, "family": "constant", "rule": r}, tiny_flow)["f1_mean"]
                 for r in ("all_positive", "prevalence")]
    sssnet = _run("sssnet", {**base, **SSSNET}, tiny_flow)
    samples = tiny_flow[0]
    chance = {m: _chance_q99(samples, m) for m in ("f1_mean", "auc_mean")}
    print(json.dumps({"constants": constants, "chance_q99": chance, "f1_mean": sssnet["f1_mean"],
                      "auc_mean": sssnet["auc_mean"], "per_au": sssnet["f1_per_au"]}, indent=1))
    assert sssnet["n_samples"] == 4 * N_SAMPLES + 2 * N_LOSO
    # bars (module docstring): above the random guesser's 99th percentile on these labels, and
    # above the best constant; well below perfect
    assert sssnet["auc_mean"] > chance["auc_mean"] + AUC_MARGIN
    assert sssnet["f1_mean"] > max(chance["f1_mean"], *constants) + F1_MARGIN
    assert sssnet["f1_mean"] < 0.9
