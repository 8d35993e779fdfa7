"""Faults and bad input end in one clear line, never in silent wrong data or a leftover temporary.

Each test reproduces one probe of issue #15 on a small temporary tree: a truncated frame, a full
or read-only disk (a small tmpfs when the test may mount one, else an injected ``OSError``),
temporaries of killed processes, Ctrl-C, bad ``params.yaml`` values, changed frames.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import yaml
from fixtures_databases import build_all

from pipeline import params
from pipeline.databases.index import IndexOptions, build_index, frame_fingerprints, write_index
from pipeline.features import cache as cache_mod
from pipeline.features.cache import CacheWriter
from pipeline.features.faces import check_complete, read_frame
from pipeline.features.stage import SampleFailure
from pipeline.io import sweep_stale_temporaries

ROOT = Path(__file__).resolve().parents[1]
LENIENT = IndexOptions(max_bad_share=0.5)   # the fixtures hold bad rows on purpose


def _run(args: list[str], cwd: Path = ROOT, **kw) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300, **kw)


# ---------------------------------------------------------------------------------------------
# 1. truncated and corrupt frames


@pytest.mark.parametrize("ext", [".jpg", ".png"])
def test_truncated_frame_is_a_sample_failure_not_a_grey_crop(tmp_path, ext):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (96, 96, 3), dtype=np.uint8)
    whole = tmp_path / f"whole{ext}"
    cv2.imwrite(str(whole), img)
    data = whole.read_bytes()
    cut = tmp_path / f"cut{ext}"
    cut.write_bytes(data[: len(data) // 3])
    assert read_frame(str(whole)).shape == (96, 96, 3)
    check_complete(str(whole))
    if ext == ".jpg":   # what the probe saw: OpenCV decodes it, the lower rows flat grey
        grey = cv2.imread(str(cut))
        assert grey is not None and grey[-10:].std() == 0
    with pytest.raises(SampleFailure, match=rf"cut\{ext}: truncated or corrupt"):
        read_frame(str(cut))


# ---------------------------------------------------------------------------------------------
# 2. write errors: one line naming the path, temporary removed, exit non-zero


def _fill(writer: CacheWriter, n: int = 400) -> None:
    rng = np.random.default_rng(0)
    for i in range(n):
        writer.append(f"s{i:04d}", {"x": rng.random((48, 48, 3), dtype=np.float32)})


def test_cache_writer_stops_at_the_first_write_error(tmp_path, monkeypatch, capfd):
    written = {"n": 0}

    def raw_write(self, data):   # a disk that fills up after 300 kB
        if written["n"] > 300_000:
            raise OSError(errno.ENOSPC, "No space left on device")
        written["n"] += len(data)
        return os.write(self.fileno(), data)

    monkeypatch.setattr(cache_mod._GuardedFile, "_raw_write", raw_write)
    out = tmp_path / "flow.h5"
    writer = CacheWriter(out, "flow", {})
    with pytest.raises(OSError) as info:
        try:
            _fill(writer)
            writer.close()
        except BaseException:
            writer.abort()
            raise
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(out)
    assert list(tmp_path.iterdir()) == []          # no final file, no temporary
    err = capfd.readouterr().err
    assert "decrement" not in err and "Traceback" not in err
    from pipeline.io import describe_os_error

    assert describe_os_error(info.value).startswith(f"{out}: no space left on device")


def _mount_tmpfs(path: Path, size: str, readonly: bool = False) -> None:
    path.mkdir(parents=True, exist_ok=True)
    opts = f"size={size}" + (",ro" if readonly else "")
    if shutil.which("mount") is None or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")


@pytest.fixture
def tmpfs(tmp_path):
    mounted: list[Path] = []

    def mount(name: str, size: str, readonly: bool = False) -> Path:
        p = tmp_path / name
        _mount_tmpfs(p, size, readonly)
        mounted.append(p)
        return p

    yield mount
    for p in mounted:
        subprocess.run(["umount", str(p)], capture_output=True)


def test_cache_writer_on_a_full_tmpfs(tmpfs):
    disk = tmpfs("disk", "256k")
    code = ("import sys; sys.path.insert(0, 'tests'); from test_faults import _fill; "
            "from pipeline.features.cache import CacheWriter\n"
            f"w = CacheWriter({str(disk / 'flow.h5')!r}, 'flow', {{}})\n"
            "try:\n    _fill(w); w.close()\nexcept OSError as e:\n    w.abort(); print(e)\n")
    r = _run(["-c", code])
    assert r.returncode == 0, r.stderr             # no segfault, the error is an OSError
    assert "No space left on device" in r.stdout and "decrement" not in r.stderr
    assert list(disk.iterdir()) == []              # the temporary is gone: the disk is free


def _index_params(path: Path, roots: dict[str, Path], **data) -> Path:
    p = {"config": "quick",
         "data": {"source": "real", "roots": {k: str(v) for k, v in roots.items()},
                  "databases": list(roots), **data},
         "index": {"max_bad_share": 0.5}}
    path.write_text(yaml.safe_dump(p))
    return path


@pytest.mark.parametrize("readonly", [False, True], ids=["full", "read-only"])
def test_stage_on_a_full_or_read_only_disk_ends_in_one_line(tmp_path, tmpfs, readonly):
    roots = build_all(tmp_path / "raw", ["casme2", "samm"])
    pfile = _index_params(tmp_path / "params.yaml", roots)
    disk = tmpfs("disk", "8k" if not readonly else "1m", readonly=readonly)
    r = _run(["-m", "stages.index", "--params", str(pfile), "--out", str(disk / "index")])
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("index: error:")]
    assert len(errors) == 1, r.stderr
    assert str(disk) in errors[0]
    cause = "Read-only file system" if readonly else "no space left on device"
    assert cause in errors[0]
    assert list(disk.iterdir()) == []
    # a re-run on a writable disk recovers
    r = _run(["-m", "stages.index", "--params", str(pfile), "--out", str(tmp_path / "index")])
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "index" / "samples.csv").is_file()


# ---------------------------------------------------------------------------------------------
# 3. temporaries of dead processes are swept by every stage and by ./mer; Ctrl-C


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_sweep_removes_only_dead_processes_temporaries(tmp_path, monkeypatch):
    host = socket.gethostname()
    host = "".join(c if c.isalnum() or c in "_." else "_" for c in host) or "host"
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {
        "faces": {"cmd": "x", "outs": ["data/features/faces.h5"]},
        "train": {"foreach": ["a"], "do": {"cmd": "x", "outs": ["models/${key}"]}}}}))
    feats = tmp_path / "data" / "features"
    models = tmp_path / "models"
    feats.mkdir(parents=True)
    models.mkdir()
    dead, live = _dead_pid(), os.getppid()
    stale = [feats / f".faces.h5.tmp-{host}-{dead}-abc.h5", models / f".a.tmp-{host}-{dead}-x1",
             models / f".a.old-{dead}"]
    kept = [feats / f".faces.h5.tmp-{host}-{live}-abc.h5", feats / f".faces.h5.tmp-otherhost-{dead}-q.h5",
            feats / "faces.h5"]
    for p in stale + kept:
        if p.suffix == ".h5" or p.name == "faces.h5":
            p.write_bytes(b"x" * 1000)
        else:
            p.mkdir()
            (p / "f").write_text("x")
    monkeypatch.chdir(tmp_path)
    assert sorted(tmp_path / p for p in sweep_stale_temporaries()) == sorted(stale)
    assert all(p.exists() for p in kept) and not any(p.exists() for p in stale)
    # python -m pipeline.io sweep (what ./mer runs before dvc)
    again = feats / f".faces.h5.tmp-{host}-{dead}-zz.h5"
    again.write_bytes(b"x")
    r = _run(["-m", "pipeline.io", "sweep"], cwd=tmp_path)
    assert r.returncode == 0 and not again.exists(), r.stderr
    assert "left by process" in r.stderr


def test_every_stage_sweeps_at_start(tmp_path):
    """A stage restored from DVC's run cache never runs, so the next stage to run sweeps."""
    roots = build_all(tmp_path / "raw", ["samm"])
    pfile = _index_params(tmp_path / "params.yaml", roots)
    host = "".join(c if c.isalnum() or c in "_." else "_" for c in socket.gethostname())
    stale = tmp_path / "data" / "features" / f".flow.h5.tmp-{host}-{_dead_pid()}-k.h5"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"x" * 100)
    shutil.copy(ROOT / "dvc.yaml", tmp_path / "dvc.yaml")
    r = _run(["-m", "stages.index", "--params", str(pfile), "--out", "data/index"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert not stale.exists() and "left by process" in r.stderr


# ---------------------------------------------------------------------------------------------
# 4. parameters


def test_shipped_params_validate_in_both_configs():
    raw = params.load(ROOT / "params.yaml")
    for config in params.CONFIGS:
        for budget in params.BUDGETS:
            assert params.errors(dict(raw, config=config,
                                      train=dict(raw["train"], budget=budget))) == []


def test_every_registered_family_declares_its_keys():
    from pipeline.params_schema import declared_families
    from pipeline.training import registry

    # the project's families (tests may register their own, e.g. tests/test_predict.py)
    ours = [f for f in registry.registered_families()
            if registry._FAMILIES[f].__module__.startswith("pipeline.")]
    assert ours == declared_families()
    assert set(ours) >= {"constant", "sssnet", "resnet_flow", "infusenet", "ac4au", "mimicking",
                         "gam_mm_mer"}


PROBES = {
    "train.epochs": (("train", "epochs"), -3, "train.epochs: expected an integer >= 1, got -3"),
    "family": (("methods", "sssnet", "family"), "sssnett",
               "methods.sssnet.family: unknown method family 'sssnett'; did you mean 'sssnet'?"),
    "optimiser": (("methods", "sssnet", "optimizer", "name"), "adamm",
                  "methods.sssnet.optimizer.name: expected adam | adamw | sgd, got 'adamm' "
                  "(did you mean 'adam'?)"),
    "epochs ten": (("methods", "sssnet", "epochs"), "ten",
                   "methods.sssnet.epochs: expected an integer >= 1, got 'ten'"),
    "lr": (("methods", "sssnet", "optimizer", "lr"), -1,
           "methods.sssnet.optimizer.lr: expected a number > 0, got -1"),
    "typo": (("methods", "sssnet", "epcohs"), 1,
             "methods.sssnet.epcohs: unknown key; did you mean 'epochs'?"),
    "section typo": (("flow", "tvl1", "tua"), 0.2, "flow.tvl1.tua: unknown key; did you mean 'tau'?"),
    "paper block": (("methods", "sssnet", "paper", "batch_sise"), 8,
                    "methods.sssnet.batch_sise: unknown key; did you mean 'batch_size'? "
                    "(config: paper)"),
    "budget": (("train", "budget"), "long",
               "train.budget: expected learn | smoke, got 'long'"),
    "budget epochs": (("train", "learn_epochs", "loso"), 0,
                      "train.learn_epochs.loso: expected an integer >= 1, got 0"),
    "learn block": (("methods", "sssnet", "learn"), {"epochs": 10},
                    "methods.sssnet.learn: learn: blocks were replaced by one rule for every "
                    "method (train.budget, train.learn_epochs); move its other keys into the "
                    "section"),
    "amplitude scale": (("standin", "amplitude_scale"), 0,
                        "standin.amplitude_scale: expected a number > 0, got 0"),
    "null": (("faces", "sizes"), None, "faces.sizes: expected a list, got null"),
    "choice": (("data", "source"), "reel",
               "data.source: expected standin | real, got 'reel' (did you mean 'real'?)"),
}


@pytest.mark.parametrize("probe", list(PROBES))
def test_bad_params_end_in_one_line_naming_the_key(tmp_path, probe):
    where, value, message = PROBES[probe]
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    node = raw
    for part in where[:-1]:
        node = node.setdefault(part, {})
    node[where[-1]] = value
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(params.ParamsError) as info:
        params.load(path)
    if probe == "family":
        assert str(info.value).startswith(f"{path}: {message}")
    else:
        assert str(info.value) == f"{path}: {message}"
    r = _run(["-m", "pipeline.params", "validate", str(path)])
    assert r.returncode == 2 and r.stderr.strip() == str(info.value), r.stderr


def test_validation_imports_no_torch():
    code = ("import sys, pipeline.params as p; p.load('params.yaml'); "
            "print('torch' in sys.modules, 'pipeline.training.registry' in sys.modules)")
    r = _run(["-c", code])
    assert r.returncode == 0 and r.stdout.split() == ["False", "False"], r.stderr


def test_training_seed_sets_torch_deterministic_without_importing_inductor():
    """torch.use_deterministic_algorithms imports torch._inductor (~2 s in every train stage)."""
    code = ("import sys, torch; from pipeline.training.trainer import seed_everything; "
            "seed_everything(0, torch.device('cpu')); "
            "print(torch.are_deterministic_algorithms_enabled(), "
            "torch.is_deterministic_algorithms_warn_only_enabled(), "
            "'torch._inductor' in sys.modules)")
    r = _run(["-c", code])
    assert r.returncode == 0 and r.stdout.split() == ["True", "True", "False"], r.stderr


def test_report_stage_imports_no_torch():
    """The report reads JSON and draws PNGs: importing torch cost it ~4 s of its ~25 s."""
    r = _run(["-c", "import sys, stages.report; print('torch' in sys.modules)"])
    assert r.returncode == 0 and r.stdout.split() == ["False"], r.stderr


def test_train_stage_rejects_a_typo_before_any_work(tmp_path):
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["methods"]["sssnet"]["epcohs"] = 1
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    r = _run(["-m", "stages.train", "sssnet", "--params", str(tmp_path / "params.yaml"),
              "--samples", str(tmp_path / "absent.csv"), "--models", str(tmp_path / "models"),
              "--metrics", str(tmp_path / "metrics")])
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip().splitlines() == [
        f"train: sssnet: {tmp_path / 'params.yaml'}: methods.sssnet.epcohs: unknown key; "
        "did you mean 'epochs'?"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]


# ---------------------------------------------------------------------------------------------
# 5. changed frames re-run faces; the real-data path needs no stand-in


def test_index_fingerprints_change_with_the_frames(tmp_path, monkeypatch):
    roots = build_all(tmp_path / "raw", ["casme2", "samm"])
    monkeypatch.chdir(tmp_path)
    first = write_index(build_index(roots, LENIENT), tmp_path / "a")
    fp1 = pd.read_csv(first / "frames.csv", dtype=str)
    samples = pd.read_csv(first / "samples.csv", dtype=str)
    assert fp1.sample_id.tolist() == samples.sample_id.tolist()
    row = samples.iloc[0]
    frame = Path(row.frame_dir) / row.frames.split("|")[1]
    frame.write_bytes(frame.read_bytes() + b"\0")                    # a replaced frame
    second = write_index(build_index(roots, LENIENT), tmp_path / "b")
    fp2 = pd.read_csv(second / "frames.csv", dtype=str)
    assert (second / "samples.csv").read_bytes() == (first / "samples.csv").read_bytes()
    changed = fp1.sample_id[fp1.fingerprint != fp2.fingerprint].tolist()
    assert changed == [row.sample_id]
    assert int(fp2.bytes[0]) == int(fp1.bytes[0]) + 1
    os.utime(frame, ns=(1, 1))                                      # touched only
    fp3 = frame_fingerprints(pd.read_csv(second / "samples.csv", dtype=str))
    assert fp3.fingerprint[0] != fp2.fingerprint[0]


def test_dvc_faces_depends_on_the_index_folder_and_standin_on_the_source():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert "data/index" in stages["faces"]["deps"]
    assert "data.source" in stages["standin"]["params"]


def test_standin_in_real_mode_builds_nothing_and_missing_photos_say_how(tmp_path):
    p = {"config": "quick", "data": {"source": "real"},
         "standin": {"profile": "tiny", "faces_dir": str(tmp_path / "nope"), "n_jobs": 1,
                     "out": str(tmp_path / "standin")}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(p))
    r = _run(["-m", "stages.standin", "--params", str(tmp_path / "params.yaml")])
    assert r.returncode == 0, r.stderr
    assert [f.name for f in (tmp_path / "standin").iterdir()] == ["NOT_BUILT.md"]
    p["data"]["source"] = "standin"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(p))
    r = _run(["-m", "stages.standin", "--params", str(tmp_path / "params.yaml")])
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "nope" in lines[0] and "MER_FACES_DIR" in lines[0]


# ---------------------------------------------------------------------------------------------
# Ctrl-C


@pytest.mark.skipif(not hasattr(signal, "SIGINT"), reason="POSIX signals")
def test_ctrl_c_prints_one_line_and_exits_130(tmp_path):
    code = ("import time\nfrom pipeline.io import start_stage, atomic_path\n"
            "start_stage('demo')\n"
            f"with atomic_path({str(tmp_path / 'out.txt')!r}) as tmp:\n"
            "    tmp.write_text('partial'); print('ready', flush=True); time.sleep(60)\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=tmp_path, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGINT                       # the shell shows 130
    assert err.strip().splitlines() == ["demo: interrupted (Ctrl-C); nothing was written"]
    assert list(tmp_path.iterdir()) == []
