"""The shared trainer, the registry, the runner's outputs and the train stage, on synthetic caches."""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
import training_synth
import yaml

from pipeline.params import method_params
from pipeline.training.data import FeatureStore, InputSpec, preprocess_flow, read_samples
from pipeline.training.protocols import CD6ME_AUS, EMOTION_TASKS, fold_seed
from pipeline.training.registry import MethodError, build_method, class_weights_inverse
from pipeline.training.run import RunPaths, run_method, score_columns
from pipeline.training.trainer import (
    TrainSettings,
    flow_hflip,
    make_optimizer,
    make_scheduler,
    open_live,
    resolve_device,
)

AU_KEYS = {"task", "protocol", "data", "f1_mean", "f1_per_au", "f1_per_database",
           "f1_database_mean", "n_samples", "auc_mean", "auc_per_au"}
SIZE = 24
TINY = {"epochs": 2, "batch_size": 16, "device": "cpu", "input_size": SIZE,
        "optimizer": {"name": "adam", "lr": 0.003}, "save_checkpoints": False}


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    csv, feats = training_synth.build(root, n_subjects=3, per_subject=4, size=SIZE, seed=1,
                                      drop_from_flow=2)
    return read_samples(csv), feats


def _run(name, params, synth, out: Path, label="standin-quick"):
    samples, feats = synth
    paths = RunPaths(out / "models" / name, out / "metrics" / name, out / "metrics" / f"{name}.json")
    return run_method(name, params, samples, feats, paths, label, seed=0), paths


def test_constant_all_positive_outputs_and_values(synth, tmp_path):
    res, paths = _run("cp", {"family": "constant", "rule": "all_positive", "task": "au",
                             "protocol": "cd6me"}, synth, tmp_path)
    assert set(res) == AU_KEYS
    assert json.loads(paths.json.read_text()) == res
    samples = synth[0]
    cd = samples[samples["database"] != "smic"]
    for au in CD6ME_AUS:  # all-positive: F1 = 2p / (1 + p) on the pooled samples
        p = cd[au].mean()
        assert res["f1_per_au"][au] == pytest.approx(2 * p / (1 + p))
    assert res["n_samples"] == len(cd)
    assert sorted(p.stem for p in paths.folds.glob("*.json")) == sorted(
        ["casme", "casme2", "samm", "fourd", "mmew", "casme3a"])
    fold = json.loads((paths.folds / "samm.json").read_text())
    assert AU_KEYS <= set(fold) and fold["held_out"] == "samm"
    assert fold["seed"] == fold_seed(0, "samm")  # by the fold's name, not its position
    # a constant score ranks nothing: AUC 0.5 for every AU with both classes present
    assert res["auc_mean"] == pytest.approx(0.5)
    assert all(v is None or v == pytest.approx(0.5) for v in res["auc_per_au"].values())
    assert set(fold["f1_per_database"]) == {"samm"}
    pred = pd.read_csv(paths.metrics / "predictions.csv")
    assert len(pred) == len(cd) and pred["sample_id"].is_unique
    assert list(pred.columns[:3]) == ["sample_id", "database", "fold"]
    assert {f"true_{a}" for a in CD6ME_AUS} | {f"pred_{a}" for a in CD6ME_AUS} <= set(pred.columns)
    assert (pred["fold"] == pred["database"]).all()
    assert (paths.models / "samm.json").is_file()


def test_constant_emotion_majority_and_prevalence(synth, tmp_path):
    res, paths = _run("maj", {"family": "constant", "rule": "majority", "task": "emotion",
                              "protocol": "loso"}, synth, tmp_path)
    assert set(res) == {"task", "protocol", "data", "results"}
    assert {"casme2-5", "casme2-3", "samm-5", "samm-3", "smic-3", "composite-3",
            "composite-3/smic", "composite-3/casme2", "composite-3/samm"} == set(res["results"])
    for r in res["results"].values():
        assert set(r) == {"accuracy", "uf1", "uar", "n_samples"}
    pred = pd.read_csv(paths.metrics / "predictions.csv", keep_default_na=False)
    assert list(pred.columns[:6]) == ["task", "sample_id", "database", "fold", "true", "pred"]
    for key, rows in pred.groupby("task"):
        classes = list(EMOTION_TASKS[key].classes)
        for fold, test in rows.groupby("fold"):
            # the fold's prediction is the most frequent class of the other folds' labels
            # (ties: the first in class order)
            train = rows.loc[rows["fold"] != fold, "true"].tolist()
            expected = max(classes, key=lambda c: (train.count(c), -classes.index(c)))
            assert (test["pred"] == expected).all(), (key, fold)
        y = rows["true"].map(classes.index).to_numpy()
        yhat = rows["pred"].map(classes.index).to_numpy()
        recall = [float((yhat[y == c] == c).mean()) for c in np.unique(y)]
        f1 = [2 * ((y == c) & (yhat == c)).sum() / ((y == c).sum() + (yhat == c).sum())
              for c in np.unique(y)]
        r = res["results"][key]
        assert r["n_samples"] == len(rows)
        assert r["accuracy"] == pytest.approx(float((y == yhat).mean()))
        assert r["uar"] == pytest.approx(np.mean(recall))
        assert r["uf1"] == pytest.approx(np.mean(f1))
        # a constant prediction recalls one class at most: UAR <= 1 / (classes present)
        assert r["uar"] <= 1.0 / len(np.unique(y)) + 1e-9
    prev, _ = _run("prev", {"family": "constant", "rule": "prevalence", "task": "emotion",
                            "protocol": "loso", "tasks": ["smic-3"]}, synth, tmp_path)
    assert set(prev["results"]) == {"smic-3"}


def test_prevalence_baseline_draws_with_the_training_prevalence(synth, tmp_path):
    """``rule: prevalence`` draws each AU with its training prevalence (Bernoulli, independent
    across AUs and samples) and each class with its training frequency; per fold, from that
    fold's training rows."""
    from pipeline.training.baselines import Prevalence
    from pipeline.training.protocols import Fold, cd6me_table
    from pipeline.training.registry import FoldContext

    n = 40_000
    y = np.zeros((20, 3), np.float32)
    y[:1, 0], y[:6, 1], y[:16, 2] = 1, 1, 1          # prevalences 0.05, 0.3, 0.8
    fold = Fold("f", "x", "cd6me", np.arange(20), np.arange(0))
    ctx = FoldContext(method="p", task="au", fold=fold, n_outputs=3, class_names=("A", "B", "C"),
                      train_targets=y, train_subjects=(), seed=0, params={})
    scores, draws = Prevalence().fit(ctx).predict(n, np.random.default_rng(0))
    np.testing.assert_allclose(scores, np.tile([0.05, 0.3, 0.8], (n, 1)))
    p = np.array([0.05, 0.3, 0.8])
    assert set(np.unique(draws)) == {0, 1}
    assert np.all(np.abs(draws.mean(axis=0) - p) < 5 * np.sqrt(p * (1 - p) / n))
    corr = np.corrcoef(draws.T)[np.triu_indices(3, 1)]
    assert np.all(np.abs(corr) < 0.03)                # independent across AUs
    assert np.abs(np.corrcoef(draws[:-1, 2], draws[1:, 2])[0, 1]) < 0.03  # and across samples
    emo = FoldContext(method="p", task="emotion", fold=fold, n_outputs=3,
                      class_names=("a", "b", "c"), train_targets=np.array([0] * 14 + [2] * 6),
                      train_subjects=(), seed=0, params={})
    scores, classes = Prevalence().fit(emo).predict(n, np.random.default_rng(1))
    np.testing.assert_allclose(scores[0], [0.7, 0.0, 0.3])
    freq = np.bincount(classes, minlength=3) / n
    assert freq[1] == 0 and abs(freq[0] - 0.7) < 5 * np.sqrt(0.21 / n)
    # through the runner: each fold's fitted p is its own training rows' prevalence
    res, paths = _run("prev_au", {"family": "constant", "rule": "prevalence", "task": "au",
                                  "protocol": "cd6me"}, synth, tmp_path)
    table = cd6me_table(synth[0])
    for db in ("casme", "samm"):
        fitted = json.loads((paths.models / f"{db}.json").read_text())["p"]
        train = table[table["database"] != db]
        assert fitted == pytest.approx({au: float(train[au].mean()) for au in CD6ME_AUS})


def test_score_columns_keep_decisions_through_csv(tmp_path):
    """A probability one float32 step below 0.5 stays below the threshold in predictions.csv
    (six rounded decimals had written it as 0.5, against its decision 0)."""
    below = np.nextafter(np.float32(0.5), np.float32(0))
    scores = np.array([[below, 0.5, 1e-9], [0.25, 0.999999, 0.7]], np.float32).astype(np.float64)
    frame = score_columns(scores, ["AU1", "AU2", "AU4"], pd.Index([7, 9]))
    assert list(frame.columns) == ["score_AU1", "score_AU2", "score_AU4"]
    assert list(frame.index) == [7, 9] and (frame.dtypes == np.float32).all()
    frame.to_csv(tmp_path / "p.csv", index=False)
    back = pd.read_csv(tmp_path / "p.csv").to_numpy()
    np.testing.assert_array_equal(back >= 0.5, scores >= 0.5)
    np.testing.assert_array_equal(back.astype(np.float32), scores.astype(np.float32))
    with pytest.raises(ValueError, match="3 names"):
        score_columns(scores[:, :2], ["AU1", "AU2", "AU4"])


@pytest.mark.parametrize("config", ["quick", "paper"])
def test_every_method_input_is_a_dvc_dependency_and_computed(config):
    """Each train@<method> lists the feature files its inputs read among its DVC deps, and every
    flow.h5 pair a method reads is in flow.pairs of the same configuration (else DVC would not
    re-run it when they change, or the run would stop on a missing dataset)."""
    project = Path(__file__).resolve().parents[1]
    params = {**yaml.safe_load((project / "params.yaml").read_text()), "config": config}
    stage = yaml.safe_load((project / "dvc.yaml").read_text())["stages"]["train"]
    items = stage["foreach"]
    slots = [d for d in stage["do"]["deps"] if d.startswith("${item.")]
    assert set(items) == set(params["methods"]) and slots
    from pipeline.params import section

    pairs = set(section("flow", params)["pairs"])
    for name in params["methods"]:
        spec = build_method(name, method_params(params, name))
        deps = {items[name][s[len("${item."):-1]] for s in slots}
        for i in spec.inputs:
            assert f"data/features/{i.cache}.h5" in deps, (name, i.cache)
            if i.cache == "flow":
                assert i.dataset.split("/")[0] in pairs, (name, i.dataset)
    apex = build_method("mimicking", {**method_params(params, "mimicking"), "flow_source": "apex"})
    assert {(i.cache, i.dataset) for i in apex.inputs} >= {("flow", "offset_apex")}
    assert "data/features/flow.h5" in items["mimicking"].values()
    assert ("offset_apex" in pairs) == (config == "paper")  # quick: onset_apex only


def test_registry_errors():
    with pytest.raises(MethodError, match="unknown method family 'nope'"):
        build_method("x", {"family": "nope"})
    with pytest.raises(MethodError, match="does not apply"):
        build_method("x", {"family": "constant", "rule": "majority", "task": "au",
                           "protocol": "cd6me"})
    with pytest.raises(MethodError, match="runs under"):
        build_method("x", {"family": "sssnet", "task": "au", "protocol": "loso"})
    spec = build_method("r", {"family": "resnet_flow", "task": "emotion", "protocol": "loso",
                              "input_size": 32})
    assert spec.emotion_tasks == tuple(EMOTION_TASKS)
    assert spec.inputs[0] == InputSpec("flow", "flow", "onset_apex", "flow", 32)


def test_same_seed_same_metrics_and_missing_features(synth, tmp_path):
    params = {"family": "sssnet", "task": "au", "protocol": "cd6me", **TINY,
              "augment": {"hflip": 0.5}, "save_checkpoints": True}
    a, pa = _run("s", params, synth, tmp_path / "a")
    b, pb = _run("s", params, synth, tmp_path / "b")
    assert a == b
    assert (pa.metrics / "predictions.csv").read_bytes() == (pb.metrics / "predictions.csv").read_bytes()
    assert 0.0 <= a["f1_mean"] <= 1.0
    # two samples have no flow: listed, not trained on, scored with the fallback (no AU)
    missing = pd.read_csv(pa.metrics / "missing_features.csv")
    assert len(missing) == 2
    pred = pd.read_csv(pa.metrics / "predictions.csv").set_index("sample_id")
    assert (pred.loc[missing["sample_id"], [f"pred_{x}" for x in CD6ME_AUS]] == 0).all().all()
    assert a["n_samples"] == len(pred)
    ckpt = torch.load(pa.models / "casme.pt", weights_only=False)
    assert ckpt["fold"] == "casme" and ckpt["n_outputs"] == 12
    curves = pd.read_csv(pa.metrics / "curves.csv")
    assert len(curves) == 6 * 2 and set(curves["epoch"]) == {1, 2}
    assert (pa.metrics / "live" / "casme" / "plots" / "metrics" / "train" / "loss.tsv").is_file()


def test_live_folders_skip_dvc_exp_bookkeeping(tmp_path, monkeypatch):
    """Under ``dvc exp run`` (DVC_ROOT and DVC_EXP_* set) a fold's dvclive folder must not act
    as the experiment's logger, whose ``end`` git-adds untracked files after scanning the whole
    DVC project (0.5-1.7 s per fold); the variables are restored."""
    import dvclive.live

    def scan(*_a, **_k):
        raise AssertionError("ensure_dir_is_tracked called")

    monkeypatch.setattr(dvclive.live, "ensure_dir_is_tracked", scan)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    monkeypatch.setenv("DVC_EXP_BASELINE_REV", "0" * 40)
    monkeypatch.setenv("DVC_EXP_NAME", "exp-test")
    live = open_live(tmp_path / "live")
    assert not live._inside_dvc_exp
    live.log_metric("train/loss", 1.0)
    live.next_step()
    live.end()
    assert (tmp_path / "live" / "plots" / "metrics" / "train" / "loss.tsv").is_file()
    assert os.environ["DVC_EXP_BASELINE_REV"] == "0" * 40
    assert os.environ["DVC_EXP_NAME"] == "exp-test"
    # built directly, the same Live is the experiment's logger (what open_live avoids)
    plain = dvclive.live.Live(dir=str(tmp_path / "plain"), save_dvc_exp=False, dvcyaml=None,
                              report=None)
    assert plain._inside_dvc_exp


def test_loso_with_inner_validation(synth, tmp_path, monkeypatch):
    """Inner validation is drawn from the training subjects only, and each fold keeps the epoch
    with the best validation score (curves.csv) as its selected epoch."""
    from pipeline.training import run as run_module
    from pipeline.training.protocols import subject_identity

    seen = []
    real = run_module.fit_predict

    def spy(spec, ctx, store, train, test, targets, settings, validation=None, **kw):
        ids = np.asarray(store.sample_ids, dtype=object)
        seen.append((ctx.fold, set(ids[train]), set(ids[test]), set(ids[validation])))
        return real(spec, ctx, store, train, test, targets, settings, validation=validation, **kw)

    monkeypatch.setattr(run_module, "fit_predict", spy)
    params = {"family": "sssnet", "task": "emotion", "protocol": "loso", **TINY,
              "tasks": ["casme2-3", "composite-3"], "selection": "inner_val", "val_share": 0.3,
              "loss": {"class_weights": "inverse"}}
    res, paths = _run("sl", params, synth, tmp_path)
    assert set(res["results"]) == {"casme2-3", "composite-3", "composite-3/smic",
                                   "composite-3/casme2", "composite-3/samm"}
    folds = sorted(paths.folds.glob("*.json"))
    assert len(folds) == 3 + 9  # casme2-3: 3 subjects; composite: 3 x 3 subjects
    samples = synth[0].set_index("sample_id")
    subject_of = dict(zip(samples.index, subject_identity(samples.reset_index()), strict=True))
    assert len(seen) == len(folds)
    for fold, train, test, validation in seen:
        subjects = {name: {subject_of[i] for i in ids}
                    for name, ids in (("train", train), ("test", test), ("val", validation))}
        assert subjects["test"] == {fold.held_out}
        assert validation and not validation & (train | test)
        assert not subjects["val"] & (subjects["train"] | subjects["test"])
    curves = pd.read_csv(paths.metrics / "curves.csv")
    for path in folds:
        f = json.loads(path.read_text())
        assert f["task"] == "emotion" and len(f["results"]) == 1
        rows = curves[(curves["fold"] == f["fold"])].sort_values("epoch")
        assert f["selected_epoch"] == int(rows["epoch"].iloc[int(np.argmax(rows["val_score"]))])


class _EpochClock(torch.nn.Module):
    """Predicts the true class of a sample exactly in the epoch equal to its tag, the next class
    otherwise; the epoch (a buffer, so part of the state dict) also shifts every logit slightly,
    so the test scores tell which epoch's weights made them."""

    def __init__(self, n_classes: int = 3):
        super().__init__()
        self.n_classes = n_classes
        self.register_buffer("epoch", torch.zeros(()))
        self.unused = torch.nn.Parameter(torch.zeros(()))  # something for the optimiser

    def set_epoch(self, epoch: int, n_epochs: int) -> None:
        self.epoch.fill_(float(epoch))

    def forward(self, tag: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
        hit = tag.round().long() == self.epoch.long()
        cls = torch.where(hit, truth, (truth + 1) % self.n_classes)
        ramp = torch.arange(self.n_classes, dtype=torch.float32)
        return (10.0 * torch.nn.functional.one_hot(cls, self.n_classes) + 0.0 * self.unused
                + 0.01 * self.epoch * ramp)


def test_inner_val_selects_on_validation_only_and_restores_that_epoch(synth):
    """fit_predict with ``selection: inner_val`` on a model whose per-epoch behaviour is known:
    validation samples are right only in epoch 2, test samples only in epoch 3, and 4 is the last
    epoch.  Selection must pick 2 (not the test fold's 3, not the last 4), and the test scores must
    be epoch 2's (the selected weights restored before the test prediction)."""
    from pipeline.training.protocols import Fold
    from pipeline.training.registry import FoldContext, MethodSpec
    from pipeline.training.trainer import fit_predict

    samples, feats = synth
    ids = samples["sample_id"].tolist()
    inputs = (InputSpec("flow", "flow", "onset_apex", "flow", 8),)
    store = FeatureStore(inputs, ids, feats)
    avail = np.flatnonzero(store.available)
    train, validation, test = avail[:24], avail[24:36], avail[36:48]
    targets = np.arange(len(ids), dtype=np.int64) % 3
    tag = np.zeros(len(ids), np.float32)
    tag[validation], tag[test] = 2, 3
    spec = MethodSpec(task="emotion", protocol="loso", inputs=inputs,
                      build_model=lambda ctx: _EpochClock(),
                      forward=lambda model, batch: model(batch["tag"], batch["truth"]))
    fold = Fold("clock", "x/1", "clock", train, test)
    ctx = FoldContext(method="clock", task="emotion", fold=fold, n_outputs=3,
                      class_names=("a", "b", "c"), train_targets=targets[train],
                      train_subjects=("x/2",), seed=0, params={})
    settings = TrainSettings.from_params({"epochs": 4, "batch_size": 8, "selection": "inner_val",
                                          "device": "cpu", "optimizer": {"name": "sgd", "lr": 0.1}})
    out = fit_predict(spec, ctx, store, train, test, targets, settings, validation=validation,
                      extras={"tag": tag, "truth": targets})
    assert [round(r["val_score"], 6) for r in out.curves] == [0.0, 1.0, 0.0, 0.0]
    assert out.selected_epoch == 2
    clock = _EpochClock()
    clock.set_epoch(2, 4)
    with torch.no_grad():
        expected = torch.softmax(clock(torch.as_tensor(tag[test]), torch.as_tensor(targets[test])),
                                 dim=1).numpy()
    np.testing.assert_allclose(out.scores, expected, rtol=1e-5)
    assert (out.scores.argmax(axis=1) != targets[test]).all()  # epoch 2 is wrong on the test part


def test_flow_preprocessing_and_flip():
    rng = np.random.default_rng(0)
    flow = rng.normal(0, 0.5, (32, 32, 3)).astype(np.float32)
    flow[..., 2] = np.abs(flow[..., 2])
    out = preprocess_flow(flow, 16, "sample")
    assert out.shape == (3, 16, 16) and out.dtype == np.float32
    assert np.abs(out).max() <= 1.0 + 1e-6
    # flow_norm: sample divides (u, v) by the 99th percentile of the resized magnitude and ε by
    # that of |ε|, then clips to [-1, 1] (module docstring)
    resized = cv2.resize(flow, (16, 16), interpolation=cv2.INTER_AREA)
    s_uv = np.quantile(np.hypot(resized[..., 0], resized[..., 1]), 0.99) + 1e-6
    s_e = np.quantile(np.abs(resized[..., 2]), 0.99) + 1e-6
    np.testing.assert_allclose(out[:2], np.clip(resized[..., :2] / s_uv, -1, 1).transpose(2, 0, 1),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out[2], np.clip(resized[..., 2] / s_e, -1, 1), rtol=1e-5, atol=1e-6)
    # scale-free: the same flow in other units gives the same input
    np.testing.assert_allclose(preprocess_flow(flow * 7.0, 16, "sample"), out, rtol=1e-5, atol=1e-6)
    # a known case without resizing: magnitudes 1..100 on a 10 x 10 grid, all along u
    ramp = np.zeros((10, 10, 3), np.float32)
    ramp[..., 0] = np.arange(1, 101, dtype=np.float32).reshape(10, 10)
    ramp[..., 2] = 2.0
    known = preprocess_flow(ramp, None, "sample")
    q99 = np.quantile(np.arange(1, 101), 0.99)  # 99.01
    np.testing.assert_allclose(known[0].ravel(), np.minimum(np.arange(1, 101) / (q99 + 1e-6), 1.0),
                               rtol=1e-6)
    assert (known[0].ravel() == 1.0).sum() == 1 and known[0].ravel()[-2] == pytest.approx(99 / q99)
    np.testing.assert_allclose(known[2], 2.0 / (2.0 + 1e-6), rtol=1e-6)
    raw = preprocess_flow(np.full((32, 32, 3), 2.0, np.float32), 16, "none")
    np.testing.assert_allclose(raw[0], 1.0)  # u halves with the grid: pixels/frame at 16 px
    np.testing.assert_allclose(raw[2], 2.0)  # strain is scale-free
    with pytest.raises(ValueError, match="non-finite"):
        preprocess_flow(np.full((8, 8, 3), np.nan, np.float32), None)
    x = torch.arange(2 * 3 * 2 * 3, dtype=torch.float32).reshape(2, 3, 2, 3)
    out = flow_hflip({"flow": x}, torch.Generator().manual_seed(0), p=1.0)["flow"]
    np.testing.assert_array_equal(out[:, 0], -torch.flip(x[:, 0], dims=[-1]))
    np.testing.assert_array_equal(out[:, 1:], torch.flip(x[:, 1:], dims=[-1]))


def test_feature_store_preload_equals_lazy(synth):
    samples, feats = synth
    ids = samples["sample_id"].tolist()
    spec = (InputSpec("flow", "flow", "onset_apex", "flow", 16),)
    eager = FeatureStore(spec, ids, feats, preload=True)
    lazy = FeatureStore(spec, ids, feats, preload=False)
    assert eager.missing == lazy.missing and len(eager.missing) == 2
    pos = int(np.flatnonzero(eager.available)[3])
    torch.testing.assert_close(eager.item(pos)["flow"], lazy.item(pos)["flow"])
    with pytest.raises(KeyError, match="lack features"):
        eager.dataset(np.flatnonzero(~eager.available), np.zeros(len(ids)))


def test_settings_schedulers_and_weights():
    with pytest.raises(ValueError, match="selection"):
        TrainSettings.from_params({"selection": "test_fold"})
    with pytest.raises(ValueError, match="epochs"):
        TrainSettings.from_params({"epochs": 0})
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched, when = make_scheduler(opt, {"name": "exponential", "gamma": 0.5}, 4)
    opt.step()
    sched.step()
    assert when == "epoch" and opt.param_groups[0]["lr"] == pytest.approx(0.5)
    assert make_scheduler(opt, {"name": "cosine_warm_restarts"}, 4)[1] == "batch"
    with pytest.raises(ValueError, match="scheduler"):
        make_scheduler(opt, {"name": "plateau"}, 4)
    assert resolve_device("cpu").type == "cpu"
    np.testing.assert_allclose(class_weights_inverse(np.array([0, 0, 0, 1, 2, 2]), 4),
                               [1.0, 3.0, 1.5, 0.0])


def test_one_cycle_rises_to_the_optimiser_lr_and_ends_near_zero_over_the_whole_budget():
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=0.004)
    sched, when = make_scheduler(opt, {"name": "one_cycle", "pct_start": 0.25}, 4, epochs=3)
    assert when == "iteration"
    lrs = []                                  # the lr each of 3 epochs x 4 batches trains with
    for _ in range(12):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()                          # the trainer's per-batch step, also after the last
    assert lrs[0] == pytest.approx(0.004 / 25)                     # div_factor 25
    peak = int(np.argmax(lrs))
    assert peak in (2, 3) and max(lrs) == pytest.approx(0.004, rel=0.02)  # after 25 % of 13 steps
    assert all(b < a for a, b in zip(lrs[peak:-1], lrs[peak + 1:], strict=True)) and lrs[-1] < 0.004 / 20
    assert opt.param_groups[0]["betas"][0] == pytest.approx(0.95)  # β₁ cycled back up
    plain = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1, momentum=0.0)
    make_scheduler(plain, {"name": "one_cycle"}, 4, epochs=3)
    assert plain.param_groups[0]["momentum"] == 0.0               # no momentum switched on


def test_fused_adam_matches_the_per_tensor_update():
    torch.manual_seed(0)
    for name in ("adam", "adamw"):
        a, b = torch.nn.Linear(5, 3), torch.nn.Linear(5, 3)
        b.load_state_dict(a.state_dict())
        start = a.weight.detach().clone()
        cfg = {"name": name, "lr": 0.01, "weight_decay": 0.1}
        fused = make_optimizer(a, cfg)
        assert fused.defaults["fused"] is True
        cls = torch.optim.Adam if name == "adam" else torch.optim.AdamW
        plain = cls(b.parameters(), lr=0.01, weight_decay=0.1, fused=False, foreach=False)
        x = torch.randn(8, 5)
        for _ in range(3):
            for model, opt in ((a, fused), (b, plain)):
                opt.zero_grad()
                model(x).square().mean().backward()
                opt.step()
        torch.testing.assert_close(a.weight, b.weight)
        assert (a.weight - start).abs().min() > 1e-3  # three steps of lr 0.01 moved every weight


def test_train_stage_cli(synth, tmp_path, monkeypatch):
    from stages import train as train_stage

    samples, feats = synth
    params = {"config": "quick", "seed": 0, "data": {"source": "standin"},
              "standin": {"profile": "tiny"}, "train": {"device": "cpu", "save_checkpoints": False},
              "methods": {"cp": {"family": "constant", "rule": "prevalence", "task": "au",
                                 "protocol": "cd6me", "published": "sssnet_cd6me",
                                 "paper": {"rule": "all_positive"}}}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    samples.to_csv(tmp_path / "samples.csv", index=False)
    monkeypatch.chdir(tmp_path)
    args = ["cp", "--samples", "samples.csv", "--features", str(feats)]
    assert train_stage.main(args) == 0
    out = json.loads(Path("metrics/cp/detail.json").read_text())   # the full record
    assert out["data"] == "standin-tiny"
    assert out["paper"]["f1_mean"] == pytest.approx(0.405)
    assert "paper" not in json.loads(Path("metrics/cp.json").read_text())  # the headline
    assert Path("metrics/cp/predictions.csv").is_file() and Path("models/cp/run.json").is_file()
    params["config"] = "paper"  # the one switch: the method's paper: block applies
    Path("params.yaml").write_text(yaml.safe_dump(params))
    assert train_stage.main(args) == 0
    assert json.loads(Path("models/cp/casme.json").read_text())["rule"] == "all_positive"


def test_family_modules_register_their_families_and_load_lazily():
    import importlib
    import subprocess
    import sys

    from pipeline.training import registry

    for family, module in registry.FAMILY_MODULES.items():
        importlib.import_module(module)
        assert registry._FAMILIES[family].__module__ == module, family
    assert set(registry.FAMILY_MODULES) <= set(registry.registered_families())
    # a ResNet stage imports neither timm (ViT) nor the AC4AU / InfuseNet modules
    code = ("import sys; from pipeline.training.registry import build_method; "
            "build_method('r', {'family': 'resnet_flow', 'task': 'au', 'protocol': 'cd6me', "
            "'input_size': 32}); "
            "print(sorted(m for m in ('timm', 'pipeline.training.methods_ac4au', "
            "'pipeline.training.methods_infusenet') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.strip() == "[]"
