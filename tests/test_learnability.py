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
own determinism setting.  (Those figures are from the stand-in before its calibration to face units
and appearance change, issue #30; after it both tests pass, their scores not re-read.)
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.params import load, section
from pipeline.training.data import read_samples
from pipeline.training.run import RunPaths, run_method

REPO = Path(__file__).resolve().parents[1]
CROP = 64          # faces crop and flow size (px) for speed; the quick configuration uses 112
INPUT = 32         # model input side (px)
# the quick configuration's ResNet18 layer widths (params.yaml, methods.resnet18_flow.widths)
QUICK_WIDTHS = section("methods", load(REPO / "params.yaml"))["resnet18_flow"]["widths"]
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
    profile = Profile(name="learnability", contact_samples=1,
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


@pytest.mark.slow
def test_resnet18_flow_beats_constants_and_is_not_perfect(tiny_flow):
    base = {"task": "au", "protocol": "cd6me"}
    constants = [_run(r, {**base, "family": "constant", "rule": r}, tiny_flow)["f1_mean"]
                 for r in ("all_positive", "prevalence")]
    resnet = _run("resnet18_flow", {
        **base, "family": "resnet_flow", "arch": "resnet18", "pretrained": False,
        "widths": QUICK_WIDTHS, "input_size": INPUT, "epochs": 20, "batch_size": 16,
        "device": "cpu", "torch_threads": 1,
        "optimizer": {"name": "adam", "lr": 0.001}, "scheduler": {"name": "none"},
        "loss": {"pos_weight": "balanced"}, "augment": {"hflip": 0.5},
        "save_checkpoints": False}, tiny_flow)
    print(json.dumps({"constants": constants, "resnet18_flow": resnet["f1_mean"],
                      "auc_mean": resnet["auc_mean"], "per_au": resnet["f1_per_au"]}, indent=1))
    assert resnet["n_samples"] == 4 * N_SAMPLES + 2 * N_LOSO
    # measured at stand-in seed 7 (2026-12-01, commit 0122867: the quick widths, Adam's fused
    # step): F1 0.216 against all-positive 0.171 and prevalence 0.077; mean AU ROC AUC 0.562
    # (constants 0.5).  The AUC says the scores rank the samples, which F1 at 0.5 alone cannot
    # tell.  This small profile leaves little room: torchvision's widths gave 0.199 / 0.574 with
    # the per-tensor Adam step and 0.195 / 0.519 with the fused one (rounding alone).
    assert resnet["f1_mean"] > max(constants) + 0.02
    assert resnet["auc_mean"] > 0.55
    assert resnet["f1_mean"] < 0.9


@pytest.mark.slow
def test_sssnet_loso_beats_constants_and_is_not_perfect(tiny_flow):
    base = {"task": "emotion", "protocol": "loso", "tasks": ["composite-3"]}
    constants = [_run(r, {**base, "family": "constant", "rule": r}, tiny_flow)["results"]
                 ["composite-3"]["uf1"] for r in ("majority", "prevalence")]
    sssnet = _run("sssnet_loso", {
        **base, "family": "sssnet", "input_size": CROP, "epochs": 10, "batch_size": 16,
        "device": "cpu", "torch_threads": 1, "optimizer": {"name": "adam", "lr": 0.001},
        "scheduler": {"name": "exponential", "gamma": 0.95}, "augment": {"hflip": 0.5},
        "loss": {"class_weights": "inverse"}, "save_checkpoints": False}, tiny_flow)
    res = sssnet["results"]
    print(json.dumps({"constants": constants, "sssnet_loso": res}, indent=1))
    assert res["composite-3"]["n_samples"] == sum(res[f"composite-3/{k}"]["n_samples"]
                                                  for k in LOSO_KEYS)
    # measured at stand-in seed 7 (2026-12-01): UF1 0.335 against majority 0.245 and prevalence
    # draws 0.290 (20 epochs: 0.342).  108 samples of 12 subjects: the quick profile's 324 LOSO
    # samples give SSSNet a margin of ~0.3 over the majority predictor (docs/experiments.md).
    assert res["composite-3"]["uf1"] > max(constants) + 0.03
    assert res["composite-3"]["uf1"] < 0.95
