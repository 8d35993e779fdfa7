"""AC4AU in the shared trainer (pipeline.training.methods_ac4au) on a synthetic faces.h5.

A tiny CD6ME run end to end (metrics, predictions, folds), the fold hygiene of its losses (the
subject loss sees training subjects only, the focal priors α come from the training folds only),
the ablation switches of Table 2/3 and the parameter errors.  The model-level checks (FRD, gates,
Eq. 8, Eq. 7) are in tests/test_ac4au.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import training_synth
import yaml

from pipeline.features.cache import CacheError
from pipeline.models import ac4au_losses
from pipeline.params import resolve
from pipeline.reporting.published import published_for
from pipeline.training import methods_ac4au, run
from pipeline.training.data import FeatureStore, read_samples
from pipeline.training.protocols import CD6ME_AUS, cd6me_folds, cd6me_table, subject_identity
from pipeline.training.registry import FoldContext, MethodError, build_method
from pipeline.training.run import RunPaths, run_method

PROJECT = Path(__file__).resolve().parents[1]
AU_KEYS = {"task", "protocol", "data", "f1_mean", "f1_per_au", "f1_per_database",
           "f1_database_mean", "n_samples", "auc_mean", "auc_per_au"}
LENGTH, SIZE = 4, 32
# Quarter-width MobileFaceNet on 32-px frames (2x2 tokens), l = 4: the paper's architecture, tiny.
PARAMS = {
    "family": "ac4au", "task": "au", "protocol": "cd6me", "sequence_size": SIZE,
    "epochs": 1, "batch_size": 8, "device": "cpu", "torch_threads": 1, "save_checkpoints": False,
    "optimizer": {"name": "adam", "lr": 0.003},
    "model": {"input_size": SIZE, "sequence_length": LENGTH, "width_mult": 0.25,
              "embedding_dim": 16, "expert_hidden": 8, "dropout": 0.0},
}



@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    """samples.csv of 7 databases x 2 subjects x 3 samples; faces.h5 without one sample."""
    root = tmp_path_factory.mktemp("synth_ac4au")
    csv, feats = training_synth.build(root, n_subjects=2, per_subject=3, size=8, seed=2)
    training_synth.build_faces(csv, feats, length=LENGTH, size=SIZE, seed=2, drop=1)
    return read_samples(csv), feats


def _params(**model) -> dict:
    out = json.loads(json.dumps(PARAMS))
    out["model"].update(model)
    return out


def _run(params, synth, out: Path):
    samples, feats = synth
    paths = RunPaths(out / "models", out / "metrics", out / "ac4au.json")
    return run_method("ac4au", params, samples, feats, paths, "standin-quick", seed=0), paths


def test_tiny_cd6me_run_writes_valid_metrics(synth, tmp_path):
    params = {**_params(), "save_checkpoints": True}
    res, paths = _run(params, synth, tmp_path)
    assert set(res) == AU_KEYS | {"epochs", "init_weights"} and res["epochs"] == params["epochs"]
    assert res["init_weights"] == "none"  # no pretrained weights given
    assert json.loads(paths.json.read_text()) == res
    assert 0.0 <= res["f1_mean"] <= 1.0 and set(res["f1_per_au"]) == set(CD6ME_AUS)
    samples = synth[0]
    cd = samples[samples["database"] != "smic"]
    assert res["n_samples"] == len(cd)
    dbs = ["casme", "casme2", "samm", "fourd", "mmew", "casme3a"]
    assert sorted(p.stem for p in paths.folds.glob("*.json")) == sorted(dbs)
    for db in dbs:
        fold = json.loads((paths.folds / f"{db}.json").read_text())
        assert AU_KEYS <= set(fold) and fold["held_out"] == db and fold["selected_epoch"] == 1
    pred = pd.read_csv(paths.metrics / "predictions.csv")
    assert len(pred) == len(cd) and pred["sample_id"].is_unique
    scores = pred[[f"score_{a}" for a in CD6ME_AUS]].to_numpy()
    decisions = pred[[f"pred_{a}" for a in CD6ME_AUS]].to_numpy()
    assert np.isfinite(scores).all() and (scores >= 0).all() and (scores <= 1).all()
    assert set(np.unique(decisions)) <= {0, 1}
    # the one sample without a sequence: listed, fallback "no AU", still scored
    missing = pd.read_csv(paths.metrics / "missing_features.csv")
    assert len(missing) == 1
    row = pred.set_index("sample_id").loc[missing["sample_id"].iloc[0]]
    assert (row[[f"pred_{a}" for a in CD6ME_AUS]] == 0).all()
    curves = pd.read_csv(paths.metrics / "curves.csv")
    assert len(curves) == 6 and np.isfinite(curves["train_loss"]).all()
    # the checkpoint holds the network, the priors α and one prototype per training subject
    ckpt = torch.load(paths.models / "samm.pt", weights_only=False)
    state = ckpt["state_dict"]
    assert state["criterion.subject_loss.prototypes"].shape == (10, 16)  # 5 databases x 2
    assert state["criterion.alpha"].shape == (12,)
    assert any(k.startswith("net.frame_encoder.backbone.") for k in state)


def _spy(monkeypatch):
    """Record, per fold, the FoldContext, the built module, α and every loss call's batch."""
    record: dict[str, dict] = {}
    real_build = run.build_method
    real_priors = methods_ac4au.positive_priors
    current: list[str] = []

    def priors(labels):
        alpha = real_priors(labels)
        record[current[-1]]["alpha"] = alpha
        record[current[-1]]["alpha_labels"] = np.array(labels)
        return alpha

    def build_method(name, params):
        spec = real_build(name, params)
        build_model, build_loss = spec.build_model, spec.build_loss

        def model(ctx):
            current.append(ctx.fold.name)
            record[ctx.fold.name] = {"ctx": ctx, "batches": []}
            module = build_model(ctx)
            record[ctx.fold.name]["module"] = module
            return module

        def loss(ctx):
            inner = build_loss(ctx)

            def spy(step, batch):
                record[ctx.fold.name]["batches"].append(
                    (step.training, batch["index"].numpy().copy(),
                     None if "subject" not in batch else batch["subject"].numpy().copy()))
                return inner(step, batch)
            return spy

        spec.build_model, spec.build_loss = model, loss
        return spec

    arcface_calls: list[tuple[int, np.ndarray]] = []
    real_forward = ac4au_losses.AdditiveAngularMarginLoss.forward

    def arcface_forward(self, features, labels):
        arcface_calls.append((self.n_subjects, labels.numpy().copy()))
        return real_forward(self, features, labels)

    monkeypatch.setattr(run, "build_method", build_method)
    monkeypatch.setattr(methods_ac4au, "positive_priors", priors)
    monkeypatch.setattr(ac4au_losses.AdditiveAngularMarginLoss, "forward", arcface_forward)
    return record, arcface_calls


def test_subject_loss_and_priors_see_training_folds_only(synth, tmp_path, monkeypatch):
    record, arcface_calls = _spy(monkeypatch)
    _run(_params(), synth, tmp_path)
    samples, feats = synth
    table = cd6me_table(samples)
    identity = subject_identity(table)
    targets = table[list(CD6ME_AUS)].to_numpy(np.float64)
    missing = set(pd.read_csv(tmp_path / "metrics" / "missing_features.csv")["sample_id"])
    assert len(missing) == 1
    in_faces = ~table["sample_id"].isin(missing).to_numpy()
    global_alpha = targets[in_faces].mean(axis=0)
    folds = {f.name: f for f in cd6me_folds(table)}
    assert set(record) == set(folds)
    differs = 0
    for name, rec in record.items():
        fold, ctx = folds[name], rec["ctx"]
        train_rows = fold.train[in_faces[fold.train]]
        # the subject classes are exactly the training rows' subjects, none of the held-out one
        assert ctx.train_subjects == tuple(sorted(set(identity[train_rows])))
        assert not [s for s in ctx.train_subjects if s.startswith(f"{fold.held_out}/")]
        assert rec["module"].n_prototypes == len(ctx.train_subjects)
        # α_k: the positive share of AU k over the training rows, nothing from the test fold
        np.testing.assert_allclose(rec["alpha"], targets[train_rows].mean(axis=0))
        np.testing.assert_allclose(rec["module"].criterion.alpha.numpy(), rec["alpha"], rtol=1e-6)
        differs += not np.allclose(rec["alpha"], global_alpha)
        train_batches = [b for b in rec["batches"] if b[0]]
        assert train_batches and all(not b[0] for b in rec["batches"][len(train_batches):])
        seen = np.concatenate([b[1] for b in train_batches])
        assert sorted(seen) == sorted(train_rows)  # one epoch: every training row once
        for _, index, subject in train_batches:
            assert subject is not None and (subject >= 0).all()
            # each subject label names the sample's own (training) subject
            assert [ctx.train_subjects[s] for s in subject] == list(identity[index])
            assert not np.isin(index, fold.test).any()
    assert differs > 0  # the test fold's labels would have changed α
    assert len(arcface_calls) == sum(len([b for b in r["batches"] if b[0]]) for r in record.values())
    for n_subjects, labels in arcface_calls:
        assert n_subjects == 10 and ((labels >= 0) & (labels < n_subjects)).all()


def _one_fold(synth, params):
    """A FoldContext of the samm fold, the FeatureStore and a training batch of 6 samples."""
    samples, feats = synth
    spec = build_method("ac4au", params)
    table = cd6me_table(samples)
    fold = next(f for f in cd6me_folds(table) if f.name == "samm")
    store = FeatureStore(spec.inputs, table["sample_id"].tolist(), feats)
    train = fold.train[store.available[fold.train]]
    targets = table[list(CD6ME_AUS)].to_numpy(np.float32)
    identity = subject_identity(table)
    subjects = tuple(sorted(set(identity[train])))
    ctx = FoldContext("ac4au", "au", fold, 12, tuple(CD6ME_AUS), targets[train], subjects, 7,
                      params)
    index = {s: i for i, s in enumerate(subjects)}
    extras = {"subject": np.array([index.get(s, -1) for s in identity], dtype=np.int64)}
    ds = store.dataset(train[:6], targets, extras if spec.needs_subjects else None)
    batch = torch.utils.data.default_collate([ds[i] for i in range(len(ds))])
    return spec, ctx, batch, store, fold, extras, targets


@pytest.mark.parametrize("model, check", [
    ({}, "full"),
    ({"use_frd": False}, "no_frd"),
    ({"use_auser": False}, "no_auser"),
    ({"loss": "bce"}, "bce"),
    ({"gamma": 0.5}, "gamma"),
])
def test_ablation_switches_build_and_train_a_step(synth, model, check):
    params = _params(**model)
    spec, ctx, batch, *_ = _one_fold(synth, params)
    torch.manual_seed(0)
    module = spec.build_model(ctx)
    loss_fn = spec.build_loss(ctx)
    assert spec.needs_subjects == (check != "no_frd")
    assert ("subject" in batch) == spec.needs_subjects
    module.train()
    batch = spec.train_transform(batch, torch.Generator().manual_seed(0))
    assert batch["frames"].shape == (6, LENGTH, 3, SIZE, SIZE)
    assert 0.0 <= float(batch["frames"].min()) and float(batch["frames"].max()) <= 1.0
    step = spec.forward(module, batch)
    terms = module.loss_terms(step, batch["target"], batch.get("subject"))
    out = step.output
    assert spec.logits(step).shape == (6, 12)
    if check == "no_frd":
        assert module.net.frd is None and out.dc is None and module.n_prototypes == 0
        assert float(terms.dc.detach()) == 0.0
    else:
        assert out.dc.shape == (6, 16) and module.n_prototypes == len(ctx.train_subjects)
        assert float(terms.dc.detach()) > 0.0
    if check == "no_auser":
        assert out.gates is None and isinstance(module.net.head, torch.nn.Linear)
    else:
        assert out.gates.shape == (6, 12, 12)
        torch.testing.assert_close(out.gates.sum(-1), torch.ones(6, 12))
    expected_au = (ac4au_losses.binary_cross_entropy_loss(out.logits, batch["target"])
                   if check == "bce" else
                   ac4au_losses.class_aware_focal_loss(out.logits, batch["target"],
                                                       module.criterion.alpha))
    torch.testing.assert_close(terms.au, expected_au)
    gamma = 0.5 if check == "gamma" else 0.1
    torch.testing.assert_close(terms.total, gamma * terms.dc + terms.au)
    loss = loss_fn(step, batch)
    torch.testing.assert_close(loss, terms.total)
    opt = torch.optim.Adam(module.parameters(), lr=0.01)
    before = {k: v.detach().clone() for k, v in module.named_parameters()}
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    changed = {k for k, v in module.named_parameters() if not torch.equal(v, before[k])}
    assert any(k.startswith("net.frame_encoder.") for k in changed)
    assert ("criterion.subject_loss.prototypes" in changed) == (check != "no_frd")
    # outside training the loss is L_AU alone, and needs no subject
    module.eval()
    with torch.no_grad():
        step = spec.forward(module, batch)
        assert not step.training
        torch.testing.assert_close(loss_fn(step, {"target": batch["target"]}),
                                   module.loss_terms(step, batch["target"], None).au)


def test_test_fold_subject_index_is_rejected_by_the_subject_loss(synth):
    spec, ctx, batch, store, fold, extras, targets = _one_fold(synth, _params())
    test = fold.test[store.available[fold.test]]
    assert (extras["subject"][test] == -1).all()  # test-fold subjects have no class
    ds = store.dataset(test[:4], targets, extras)
    test_batch = torch.utils.data.default_collate([ds[i] for i in range(len(ds))])
    module = spec.build_model(ctx).train()
    step = spec.forward(module, test_batch)
    with pytest.raises(ValueError, match="test-fold subject must never be fed"):
        spec.build_loss(ctx)(step, test_batch)
    with pytest.raises(ValueError, match="training-subject indices"):
        module.loss_terms(step, test_batch["target"], None)


def test_no_frd_ablation_runs_end_to_end(synth, tmp_path):
    res, paths = _run(_params(use_frd=False, use_auser=False, loss="bce"), synth, tmp_path)
    assert set(res) == AU_KEYS | {"epochs", "init_weights"} and 0.0 <= res["f1_mean"] <= 1.0
    assert len(pd.read_csv(paths.metrics / "curves.csv")) == 6


@pytest.mark.parametrize("change, error, match", [
    ({"model": {"use_fdr": False}}, MethodError, r"methods\.ac4au\.model: unknown AC4AU .*use_fdr"),
    ({"model": {"loss": "hinge"}}, MethodError, "loss must be 'focal' or 'bce'"),
    ({"model": {"gamma": -0.1}}, MethodError, "gamma must be a number >= 0"),
    ({"model": {"use_frd": "no"}}, MethodError, "use_frd must be true or false"),
    ({"model": {"augment": {"flip": 0.5}}}, MethodError, "unknown AC4AU augment"),
    ({"model": {"augment": {"flip_p": 2.0}}}, MethodError, "flip_p must be in"),
    ({"model": {"input_size": 40}}, MethodError, "multiple of 16"),
    ({"model": [1, 2]}, MethodError, "must be a mapping"),
    ({"task": "emotion", "protocol": "loso"}, MethodError, "AC4AU detects AUs under CD6ME"),
])
def test_bad_params_raise_clear_errors(change, error, match):
    params = _params()
    for key, value in change.items():
        if key == "model" and isinstance(value, dict):
            params["model"].update(value)
        else:
            params[key] = value
    with pytest.raises(error, match=match):
        build_method("ac4au", params)


def test_cache_mismatches_raise_clear_errors(synth, tmp_path):
    samples, feats = synth
    paths = RunPaths(tmp_path / "m", tmp_path / "x", tmp_path / "x.json")
    with pytest.raises(CacheError, match="seq112/frames"):
        run_method("ac4au", {**_params(), "sequence_size": 112}, samples, feats, paths, "t", 0)
    with pytest.raises(ValueError, match="faces.sequence_length must equal"):
        run_method("ac4au", _params(sequence_length=8), samples, feats, paths, "t", 0)


def test_params_and_dvc_yaml_wire_train_ac4au():
    params = yaml.safe_load((PROJECT / "params.yaml").read_text())
    section = params["methods"]["ac4au"]
    for config in ("quick", "paper"):
        resolved = resolve(section, config)
        spec = build_method("ac4au", resolved)
        assert spec.inputs[0].cache == "faces"
        assert spec.inputs[0].dataset == f"seq{params['faces']['sequence_size']}/frames"
    cfg = methods_ac4au.ac4au_model_config("ac4au", resolve(section, "paper"))
    assert (cfg["input_size"], cfg["width_mult"], cfg["embedding_dim"]) == (112, 1.0, 128)
    assert (cfg["use_frd"], cfg["use_auser"], cfg["loss"], cfg["gamma"]) == (True, True, "focal", 0.1)
    assert cfg["sequence_length"] == params["faces"]["sequence_length"]
    # the pretrain stage's quarter-width MobileFaceNet is the quick start only; the paper's size
    # starts from the face recogniser a user gives (docs/methods/ac4au.md)
    assert cfg["pretrained"] is None
    assert methods_ac4au.ac4au_model_config("ac4au", resolve(section, "quick"))["pretrained"] == "stage"
    dvc = yaml.safe_load((PROJECT / "dvc.yaml").read_text())["stages"]
    assert set(dvc["train"]["foreach"]["ac4au"].values()) == {"data/features/faces.h5"}
    assert {"metrics/ac4au.json", "metrics/ac4au"} <= set(dvc["report"]["deps"])
    # the published keys docs/methods/ac4au.md's Table 2/3 experiments switch to
    assert published_for(section["published"]).f1_mean == pytest.approx(0.40508)
    table2 = {"no_pretraining": 0.22270, "no_frd": 0.27226, "no_auser": 0.29647, "bce": 0.32046,
              "gamma0.2": 0.36839, "gamma0.3": 0.35192, "gamma0.5": 0.34528, "gamma0.7": 0.30598}
    for key, f1 in table2.items():
        assert published_for(f"ac4au_{key}_cd6me").f1_mean == pytest.approx(f1)
