"""Parameters, atomic writes, asset resolution, HDF5 caches: the shared foundation."""

from __future__ import annotations

import functools
import hashlib
import http.server
import threading
from pathlib import Path

import h5py
import numpy as np
import pytest

from pipeline import assets, params
from pipeline.features.cache import CacheDataset, CacheError, CacheWriter, FeatureCache
from pipeline.io import atomic_dir, atomic_path, read_json, remove_stale_temporaries, write_json

REPO = Path(__file__).resolve().parents[1]


def test_paper_block_overrides_only_with_paper_config(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text(
        "config: quick\n"
        "flow:\n  size: 112\n  tvl1: {tau: 0.25}\n  paper: {size: 224, tvl1: {tau: 0.3}}\n"
        "methods:\n  m:\n    lr: 0.001\n    sub: {epochs: 2, paper: {epochs: 50}}\n"
    )
    quick = params.load(p, validate=False)  # resolution only (an invented method section)
    assert params.section("flow", quick) == {"size": 112, "tvl1": {"tau": 0.25}}
    assert params.section("methods.m", quick) == {"lr": 0.001, "sub": {"epochs": 2}}
    paper = dict(quick, config="paper")
    assert params.section("flow", paper) == {"size": 224, "tvl1": {"tau": 0.3}}
    assert params.section("methods.m", paper)["sub"] == {"epochs": 50}
    with pytest.raises(params.ParamsError, match="nothere"):
        params.section("nothere", quick)
    p.write_text("config: fast\n")
    with pytest.raises(params.ParamsError, match="config must be one of"):
        params.load(p)


def test_budget_sets_one_epoch_count_per_protocol_for_every_learned_method(tmp_path):
    """train.budget (issue #31): learn gives every learned method of a protocol the same epochs,
    unless its section sets its own; smoke gives every learned method smoke_epochs; constants
    and config: paper are untouched."""
    p = tmp_path / "params.yaml"
    p.write_text(
        "config: quick\n"
        "train:\n  epochs: 3\n  budget: learn\n  learn_epochs: {cd6me: 7, loso: 5}\n"
        "methods:\n"
        "  a: {family: sssnet, protocol: cd6me, model: {width: 8}, paper: {epochs: 50}}\n"
        "  b: {family: mimicking, protocol: loso}\n"
        "  own: {family: sssnet, protocol: cd6me, epochs: 2}\n"
        "  c: {family: constant, protocol: cd6me}\n"
    )
    learn = params.load(p, validate=False)
    assert params.section("methods.a", learn) == {"family": "sssnet", "protocol": "cd6me",
                                                  "model": {"width": 8}, "epochs": 7}
    assert params.section("methods.b", learn)["epochs"] == 5
    assert params.section("methods.own", learn)["epochs"] == 2
    assert "epochs" not in params.section("methods.c", learn)
    smoke = dict(learn, train=dict(learn["train"], budget="smoke"))
    assert [params.section(f"methods.{m}", smoke)["epochs"] for m in ("a", "b", "own")] == [1, 1, 1]
    assert params.section("methods.a", dict(smoke, train=dict(smoke["train"], smoke_epochs=2)))[
        "epochs"] == 2
    # the papers' settings never see the budget
    for raw in (learn, smoke):
        assert params.section("methods.a", dict(raw, config="paper"))["epochs"] == 50
        assert params.section("methods.own", dict(raw, config="paper"))["epochs"] == 2
    assert "epochs" not in learn["methods"]["a"]  # not mutated
    merged = params.method_params(learn, "b")
    assert merged["epochs"] == 5 and not set(params.BUDGET_KEYS) & set(merged)
    with pytest.raises(params.ParamsError, match="quick was renamed"):
        params.section("methods.a", dict(learn, train={"budget": "quick"}))
    with pytest.raises(params.ParamsError, match="methods.a.learn: learn: blocks were replaced"):
        params.apply_budget(dict(learn, methods={"a": {"family": "sssnet", "learn": {}}}))
    with pytest.raises(params.ParamsError, match="no entry for its protocol 'loso'"):
        params.apply_budget(dict(learn, train={"learn_epochs": {"cd6me": 3}}))


def test_learn_longer_lengthens_one_method_and_nothing_else():
    """train.learn_longer (issue #31): the budget rule's one exception gives a named method more
    epochs under learn, never fewer, and nothing under smoke or paper; a name that is not a
    learned method section, or fewer epochs than the protocol's, stops in one line."""
    raw = {"config": "quick",
           "train": {"budget": "learn", "learn_epochs": {"cd6me": 7, "loso": 5},
                     "learn_longer": {"a": 20}},
           "methods": {"a": {"family": "ac4au", "protocol": "cd6me", "paper": {"epochs": 40}},
                       "b": {"family": "sssnet", "protocol": "cd6me"},
                       "own": {"family": "ac4au", "protocol": "cd6me", "epochs": 2},
                       "c": {"family": "constant", "protocol": "cd6me"}}}
    assert params.section("methods.a", raw)["epochs"] == 20
    assert params.section("methods.b", raw)["epochs"] == 7
    assert params.section("methods.own", dict(raw, train=dict(
        raw["train"], learn_longer={"a": 20, "own": 30})))["epochs"] == 2   # its own epochs win
    assert params.section("methods.a", dict(raw, train=dict(raw["train"], budget="smoke")))[
        "epochs"] == 1
    assert params.section("methods.a", dict(raw, config="paper"))["epochs"] == 40
    assert "learn_longer" not in params.method_params(raw, "a")
    with pytest.raises(params.ParamsError,
                       match=r"train.learn_longer.a: 6 epochs, fewer than .*learn_epochs.cd6me \(7\)"):
        params.apply_budget(dict(raw, train=dict(raw["train"], learn_longer={"a": 6})))
    for bad in ("nope", "c"):
        with pytest.raises(params.ParamsError, match=rf"learn_longer names \['{bad}'\]"):
            params.apply_budget(dict(raw, train=dict(raw["train"], learn_longer={bad: 9})))


def test_shipped_budget_is_one_rule_and_the_seed_methods_get_the_median_steps():
    """The shipped params.yaml: under the default learn budget every learned method of a protocol
    has the same epochs (no section sets its own), but those of train.learn_longer, which have
    more; and each of the three seed papers' methods gets at least the median optimiser steps
    (batches of the same training fold × epochs) of the other learned methods of its protocol."""
    raw = params.load("params.yaml")
    assert raw["train"]["budget"] == params.BUDGETS[0] == "learn"
    learned = {m: s for m, s in raw["methods"].items() if s["family"] != "constant"}
    assert len(learned) == 15
    for m, s in learned.items():
        assert "epochs" not in s, f"methods.{m} sets its own epochs"
    for protocol in ("cd6me", "loso"):
        mine = {m: params.method_params(raw, m) for m, s in learned.items()
                if s["protocol"] == protocol}
        longer = raw["train"].get("learn_longer") or {}
        base = raw["train"]["learn_epochs"][protocol]
        assert {p["epochs"] for m, p in mine.items() if m not in longer} == {base}
        assert all(mine[m]["epochs"] > base for m in longer if m in mine)
        # optimiser steps on one training fold of n samples, per sample: epochs / batch
        steps = {m: p["epochs"] / p["batch_size"] for m, p in mine.items()}
        seed = {"ac4au", "gam_mm_mer", "mimicking"} & set(mine)
        others = sorted(v for m, v in steps.items() if m not in seed)
        median = others[len(others) // 2] if len(others) % 2 else sum(
            others[len(others) // 2 - 1:len(others) // 2 + 1]) / 2
        for m in seed:
            assert steps[m] >= median, m
    smoke = dict(raw, train=dict(raw["train"], budget="smoke"))
    assert {params.method_params(smoke, m)["epochs"] for m in learned} == {1}


def test_project_params_file_resolves_in_both_configs():
    raw = params.load("params.yaml")
    for config in params.CONFIGS:
        for name in raw:
            if isinstance(raw[name], dict):
                resolved = params.resolve(raw[name], config)
                assert "paper" not in resolved


def test_atomic_path_leaves_target_untouched_on_error(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half-written")
            raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]
    with atomic_path(target) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new"


def test_atomic_dir_swaps_whole_folder(tmp_path):
    out = tmp_path / "db"
    out.mkdir()
    (out / "old.txt").write_text("x")
    with pytest.raises(ValueError):
        with atomic_dir(out) as tmp:
            (tmp / "new.txt").write_text("y")
            raise ValueError
    assert sorted(p.name for p in out.iterdir()) == ["old.txt"]
    with atomic_dir(out) as tmp:
        (tmp / "new.txt").write_text("y")
    assert sorted(p.name for p in out.iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["db"]


def test_temporaries_of_killed_processes_are_removed_by_the_next_write(tmp_path):
    import os
    import subprocess
    import sys

    from pipeline.io import _tmp_prefix

    # a process that made its temporaries and was killed before it could remove them
    code = ("import sys, time; from pathlib import Path; from pipeline.io import atomic_dir, "
            "atomic_path\n"
            "d = Path(sys.argv[1])\n"
            "with atomic_path(d / 'out.h5', suffix='.h5') as t, atomic_dir(d / 'folder') as f:\n"
            "    t.write_text('partial'); (f / 'x').write_text('partial'); print('ready', flush=True)"
            "; time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE,
                            cwd=REPO)
    assert proc.stdout.readline().strip() == b"ready"
    proc.kill()
    proc.wait(30)
    left = sorted(p.name for p in tmp_path.iterdir())
    assert len(left) == 2 and all(n.startswith((".out.h5.tmp-", ".folder.tmp-")) for n in left)
    # a live process's temporary (ours) and another output's are left alone
    mine = tmp_path / f"{_tmp_prefix(tmp_path / 'out.h5')}live.h5"
    mine.write_text("in use")
    other = tmp_path / ".other.h5.tmp-elsewhere-1-x.h5"
    other.write_text("another host")
    with atomic_path(tmp_path / "out.h5") as tmp:
        tmp.write_text("complete")
    stale_folder = list(tmp_path.glob(".folder.tmp-*"))
    assert len(stale_folder) == 1
    assert remove_stale_temporaries(tmp_path / "folder") == stale_folder
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [mine.name, other.name, "out.h5"])
    assert (tmp_path / "out.h5").read_text() == "complete"
    assert os.getpid() == int(mine.name.split("-")[-2])


def test_write_json_maps_nonfinite_to_null(tmp_path):
    write_json(tmp_path / "m.json", {"f1": np.float32(0.5), "x": float("nan"), "l": (1, 2)})
    assert read_json(tmp_path / "m.json") == {"f1": 0.5, "x": None, "l": [1, 2]}


@pytest.fixture()
def http_root(tmp_path):
    root = tmp_path / "served"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_asset_resolution_local_then_download_then_clear_error(tmp_path, monkeypatch, http_root):
    monkeypatch.setenv("MER_CACHE_DIR", str(tmp_path / "cache"))
    payload = b"model bytes"
    digest = hashlib.sha256(payload).hexdigest()
    root, base = http_root
    (root / "m.task").write_bytes(payload)
    asset = assets.Asset("m.task", digest, f"{base}/m.task")

    local = tmp_path / "local"
    local.mkdir()
    (local / "m.task").write_bytes(payload)
    assert assets.resolve(asset, local) == local / "m.task"          # folder form
    assert assets.resolve(asset, local / "m.task") == local / "m.task"

    (local / "m.task").write_bytes(b"corrupted")                     # wrong checksum: download
    got = assets.resolve(asset, local / "m.task")
    assert got == tmp_path / "cache" / "m.task" and got.read_bytes() == payload

    bad = assets.Asset("n.task", digest, f"{base}/missing.task")
    with pytest.raises(assets.AssetError) as err:
        assets.resolve(bad, local / "n.task")
    assert str(local / "n.task") in str(err.value) and "missing.task" in str(err.value)

    (root / "w.task").write_bytes(b"other")
    wrong = assets.Asset("w.task", digest, f"{base}/w.task")
    with pytest.raises(assets.AssetError, match="does not match"):
        assets.resolve(wrong, None)
    assert not (tmp_path / "cache" / "w.task").exists()


def _write_cache(path, n=4, params_=None):
    with CacheWriter(path, "flow", params_ or {"size": 8}) as w:
        for i in range(n):
            w.append(f"db/s/{i}", {"onset_apex": np.full((8, 8, 3), i, np.float32),
                                    "grp/x": np.arange(2, dtype=np.int32) + i})


def test_cache_round_trip_and_dataset(tmp_path):
    path = tmp_path / "flow.h5"
    _write_cache(path)
    cache = FeatureCache(path, "flow", expect_params={"size": 8})
    assert cache.sample_ids == [f"db/s/{i}" for i in range(4)]
    assert cache.datasets["onset_apex"][0] == (4, 8, 8, 3)
    np.testing.assert_array_equal(cache.read("grp/x", [3, 0]), [[3, 4], [0, 1]])
    with h5py.File(path) as h5:
        assert h5["onset_apex"].chunks == (1, 8, 8, 3)
        assert h5["onset_apex"].compression == "gzip"
    ds = CacheDataset({"flow": (cache, "onset_apex")}, ["db/s/2", "db/s/1"], np.array([5, 6]))
    item = ds[0]
    assert float(item["flow"][0, 0, 0]) == 2.0 and int(item["target"]) == 5
    with pytest.raises(CacheError, match="samples missing"):
        CacheDataset({"flow": (cache, "onset_apex")}, ["db/s/9"])


def test_cache_rejects_wrong_schema_params_and_interrupted_writes(tmp_path):
    path = tmp_path / "flow.h5"
    with pytest.raises(CacheError, match="not found"):
        FeatureCache(path, "flow")
    with pytest.raises(KeyError):
        with CacheWriter(path, "flow", {}) as w:
            w.append("a", {"x": np.zeros(3)})
            raise KeyError("killed")
    assert not path.exists() and list(tmp_path.iterdir()) == []
    _write_cache(path)
    with pytest.raises(CacheError, match="schema 'flow', expected 'faces'"):
        FeatureCache(path, "faces")
    with pytest.raises(CacheError, match="other parameters"):
        FeatureCache(path, "flow", expect_params={"size": 16})
    with h5py.File(path, "a") as h5:
        h5.attrs["schema_version"] = 99
    with pytest.raises(CacheError, match="schema version 99"):
        FeatureCache(path, "flow")


def test_cache_writer_rejects_inconsistent_samples(tmp_path):
    with pytest.raises(ValueError, match="expected"):
        with CacheWriter(tmp_path / "f.h5", "flow", {}) as w:
            w.append("a", {"x": np.zeros((2, 2), np.float32)})
            w.append("b", {"x": np.zeros((3, 2), np.float32)})
    with pytest.raises(ValueError, match="twice"):
        with CacheWriter(tmp_path / "f.h5", "flow", {}) as w:
            w.append("a", {"x": np.zeros(2)})
            w.append("a", {"x": np.zeros(2)})
