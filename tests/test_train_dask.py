"""Training folds and seeds as Dask tasks (issue #35) on a loopback LocalCluster: the same outputs
as the local backend, a killed worker recovered, a fold failing twice failing the stage with
nothing written, an unreachable scheduler refused before any work, and the ``execution`` section
outside the train stages' DVC parameters."""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import training_synth
import yaml

from pipeline.training import run as run_module
from pipeline.training.data import read_samples

PROJECT = Path(__file__).resolve().parents[1]
SIZE = 16
TINY = {"family": "sssnet", "input_size": SIZE, "epochs": 1, "batch_size": 16,
        "optimizer": {"name": "adam", "lr": 0.003}}
CD6ME = {**TINY, "task": "au", "protocol": "cd6me", "save_checkpoints": ["casme", "samm"],
         "augment": {"hflip": 0.5}, "seeds": [0, 1], "final_model": True}
LOSO = {**TINY, "task": "emotion", "protocol": "loso", "tasks": ["casme2-3"],
        "save_checkpoints": False}
LOCAL = {"backend": "local", "torch_threads": 1}


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("dask_synth")
    csv, feats = training_synth.build(root, n_subjects=3, per_subject=3, size=SIZE, seed=3,
                                      drop_from_flow=2)
    return read_samples(csv), feats


@pytest.fixture(scope="module")
def cluster():
    """Two worker processes on 127.0.0.1, each advertising one (pretend) GPU as a cluster's GPU
    workers do; a task whose worker dies twice fails (retries 1)."""
    import dask
    from distributed import LocalCluster

    with dask.config.set({"distributed.scheduler.allowed-failures": 1,  # as the stage's own
                          "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}):
        lc = LocalCluster(host="127.0.0.1", n_workers=2, threads_per_worker=1, processes=True,
                          dashboard_address=None, silence_logs=logging.ERROR,
                          resources={"GPU": 1})
    try:
        yield lc.scheduler_address
    finally:
        lc.close()


def _stage(where: Path, method: dict, execution: dict, synth, monkeypatch,
           samples: str = "samples.csv") -> int:
    from stages import train as train_stage

    frame, feats = synth
    where.mkdir(parents=True, exist_ok=True)
    params = {"config": "quick", "seed": 0, "data": {"source": "standin"},
              "standin": {"profile": "tiny"}, "train": {"device": "cpu"},
              "execution": execution, "methods": {"m": method}}
    (where / "params.yaml").write_text(yaml.safe_dump(params))
    frame.to_csv(where / "samples.csv", index=False)
    monkeypatch.chdir(where)
    threads = torch.get_num_threads()
    try:
        return train_stage.main(["m", "--samples", samples, "--features", str(feats)])
    finally:
        torch.set_num_threads(threads)


def _outputs(root: Path) -> dict[str, object]:
    """Every output file, by path: JSON parsed (timing fields and stage.json's clock dropped), checkpoints as tensors,
    dvclive's TSVs without their timestamps, others as bytes."""
    out: dict[str, object] = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if rel in ("params.yaml", "samples.csv"):
            continue
        if path.suffix == ".json":
            data = json.loads(path.read_text())
            if isinstance(data, dict):
                data.pop("seconds", None)
                if path.name == "stage.json":  # the stage's own wall-time record
                    for key in ("wall_seconds", "started_utc", "finished_utc"):
                        data.pop(key, None)
            out[rel] = data
        elif path.suffix == ".pt":
            ckpt = torch.load(path, weights_only=False)
            out[rel] = {k: (v.tolist() if isinstance(v, torch.Tensor) else v)
                        for k, v in _flat(ckpt).items()}
        elif path.suffix == ".tsv":
            out[rel] = pd.read_csv(path, sep="\t").drop(columns="timestamp",
                                                         errors="ignore").to_dict("list")
        else:
            out[rel] = path.read_bytes()
    return out


def _flat(obj, prefix=""):
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): obj}


@pytest.fixture(scope="module")
def local_cd6me(synth, tmp_path_factory):
    mp = pytest.MonkeyPatch()
    root = tmp_path_factory.mktemp("local_cd6me")
    try:
        assert _stage(root, CD6ME, LOCAL, synth, mp) == 0
    finally:
        mp.undo()
    return _outputs(root)


def test_cd6me_folds_and_seeds_on_dask_equal_the_local_run(synth, cluster, local_cd6me,
                                                            tmp_path, monkeypatch, capsys):
    remote = tmp_path / "dask"
    execution = {"backend": "dask", "scheduler": cluster, "torch_threads": 1}
    assert _stage(remote, CD6ME, execution, synth, monkeypatch) == 0
    # the workers advertise a GPU: task_resources auto asks one per task
    assert f"on {cluster} (2 workers now, task resources {{'GPU': 1.0}}, retries 1)" in \
        capsys.readouterr().err
    got = _outputs(remote)
    assert sorted(got) == sorted(local_cd6me)
    assert got == local_cd6me
    # what the comparison covered: two seeds' folds, checkpoints, dvclive folders, final model
    assert "models/m/casme.pt" in got and "models/m/seed1/samm.pt" in got
    assert "models/m/final.pt" in got and "metrics/m/seeds/1/folds/mmew.json" in got
    assert any(k.startswith("metrics/m/live/fourd/") for k in got)
    assert json.loads((remote / "metrics/m.json").read_text())["seeds"] == [0, 1]


def test_loso_on_a_stage_started_local_cluster_equals_the_local_run(synth, tmp_path,
                                                                    monkeypatch, capsys):
    assert _stage(tmp_path / "local", LOSO, LOCAL, synth, monkeypatch) == 0
    execution = {"backend": "dask", "scheduler": None, "workers": 1, "torch_threads": 1}
    assert _stage(tmp_path / "dask", LOSO, execution, synth, monkeypatch) == 0
    assert "(1 workers now, task resources none, retries 1)" in capsys.readouterr().err
    local, remote = _outputs(tmp_path / "local"), _outputs(tmp_path / "dask")
    assert remote == local
    assert len([k for k in local if k.startswith("metrics/m/folds/")]) == 3
    assert (tmp_path / "dask/metrics/m/predictions.csv").read_bytes() == \
        (tmp_path / "local/metrics/m/predictions.csv").read_bytes()


def test_a_worker_killed_mid_fold_costs_that_fold_only(synth, cluster, local_cd6me, tmp_path,
                                                       monkeypatch):
    marker = tmp_path / "killed-once"
    original = run_module._fold_remote

    def dies_once(job, fold, threads):  # runs on a worker: its process exits mid-fold once
        if fold.name == "samm" and job.seed == 0 and not marker.exists():
            marker.touch()
            os._exit(1)
        return original(job, fold, threads)

    monkeypatch.setattr(run_module, "_fold_remote", dies_once)
    execution = {"backend": "dask", "scheduler": cluster, "torch_threads": 1}
    assert _stage(tmp_path / "dask", CD6ME, execution, synth, monkeypatch) == 0
    assert marker.exists()                                    # a worker did die
    assert _outputs(tmp_path / "dask") == local_cd6me          # and the stage's outputs are whole


def test_a_fold_failing_twice_fails_the_stage_in_one_line_writing_nothing(synth, cluster,
                                                                          tmp_path, monkeypatch,
                                                                          capsys):
    tries = tmp_path / "tries"
    tries.mkdir()
    original = run_module._fold_remote

    def fails(job, fold, threads):
        if fold.name == "fourd":
            (tries / f"{os.getpid()}-{len(list(tries.iterdir()))}").touch()
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return original(job, fold, threads)

    monkeypatch.setattr(run_module, "_fold_remote", fails)
    where = tmp_path / "dask"
    for d in ("models/m", "metrics/m"):   # a former run's outputs stay as they were
        (where / d).mkdir(parents=True)
        (where / d / "old.txt").write_text("former run")
    execution = {"backend": "dask", "scheduler": cluster, "torch_threads": 1}
    assert _stage(where, {**CD6ME, "seeds": None}, execution, synth, monkeypatch) == 1
    assert len(list(tries.iterdir())) == 2                     # tried, retried once, given up
    err = capsys.readouterr().err
    assert [line for line in err.splitlines() if "fold fourd (seed 0)" in line] == [
        "train: m: fold fourd (seed 0) failed 2 times on the Dask cluster: RuntimeError: CUDA "
        "error: an illegal memory access was encountered"]
    assert "Traceback" not in err
    assert sorted(p.relative_to(where).as_posix() for p in where.rglob("*") if p.is_file()) == [
        "metrics/m/old.txt", "models/m/old.txt", "params.yaml", "samples.csv"]


def test_an_unreachable_scheduler_is_refused_before_any_work(synth, tmp_path, monkeypatch,
                                                             capsys):
    with socket.socket() as s:   # a loopback port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    execution = {"backend": "dask", "scheduler": f"tcp://127.0.0.1:{port}",
                 "connect_timeout": 1}
    # the samples file does not exist: the connection is tried before anything is read
    assert _stage(tmp_path, CD6ME, execution, synth, monkeypatch, samples="absent.csv") == 1
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "execution.scheduler" in line]
    assert len(lines) == 1 and "Traceback" not in err
    assert lines[0].startswith(
        f"train: m: execution.scheduler: no Dask scheduler answers at tcp://127.0.0.1:{port} (")
    assert not (tmp_path / "metrics").exists() and not (tmp_path / "models").exists()


def test_execution_settings_are_no_dvc_parameter_of_the_train_stages(tmp_path):
    """A DVC project with the train stage's own params list: switching the backend, scheduler
    and thread count leaves it up to date; a result-affecting train key does not."""
    stages = yaml.safe_load((PROJECT / "dvc.yaml").read_text())["stages"]
    declared = stages["train"]["do"]["params"]
    assert "train" in declared
    assert not any(str(p).split(".")[0] == "execution" for st in stages.values()
                   for p in (st.get("do", st).get("params") or []))
    shipped = yaml.safe_load((PROJECT / "params.yaml").read_text())
    assert {"backend", "scheduler", "torch_threads"} <= set(shipped["execution"])
    assert not {"backend", "scheduler", "torch_threads"} & set(shipped["train"])

    params = {k: shipped[k] for k in ("config", "seed", "data", "standin", "train", "execution")}
    params["methods"] = {"m": {"family": "sssnet"}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    stage = {"cmd": f"{sys.executable} -c \"open('out.txt', 'w').write('trained')\"",
             "params": [p.replace("${key}", "m") for p in declared], "outs": ["out.txt"]}
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"train_m": stage}}))
    dvc = shutil.which("dvc") or str(Path(sys.executable).with_name("dvc"))

    def run(*args: str) -> str:
        done = subprocess.run([dvc, *args], cwd=tmp_path, capture_output=True, text=True,
                              check=True, env={**os.environ, "DVC_NO_ANALYTICS": "1"})
        return done.stdout

    run("init", "--no-scm", "-q")
    run("repro", "-q")
    params["execution"] = {**params["execution"], "backend": "dask", "torch_threads": 2,
                           "scheduler": "tcp://10.0.0.5:8786", "workers": 8}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    assert "up to date" in run("status")
    params["train"] = {**params["train"], "selection": "inner_val"}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    assert "modified:           train" in run("status")


@pytest.mark.parametrize("where, value, message", [
    (("execution", "backend"), "slurm", "execution.backend: expected local | dask, got 'slurm'"),
    (("execution", "retries"), -1, "execution.retries: expected an integer >= 0, got -1"),
    (("execution", "task_resources"), {"GPU": 0},
     "execution.task_resources: expected auto, null or a mapping such as {GPU: 1}, got "
     "{'GPU': 0}"),
    (("execution", "sheduler"), "tcp://x:1",
     "execution.sheduler: unknown key; did you mean 'scheduler'?"),
    (("train", "torch_threads"), 1,
     "train.torch_threads: unknown key; it moved to execution.torch_threads (how the training "
     "runs, not a DVC parameter of the train stages)"),
])
def test_bad_execution_settings_end_in_one_line_naming_the_key(tmp_path, where, value, message):
    raw = yaml.safe_load((PROJECT / "params.yaml").read_text())
    raw[where[0]][where[1]] = value
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    done = subprocess.run([sys.executable, "-m", "pipeline.params", "validate", str(path)],
                          cwd=PROJECT, capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.strip() == f"{path}: {message}"
