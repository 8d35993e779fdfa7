"""The sample table (pipeline.databases.index) and the ``index`` stage, in-process and through a
real ``dvc repro index`` in a throw-away git + DVC repository."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from fixtures_databases import build_all, build_casme2, build_samm

from pipeline.databases import KEYS, DatabaseError, DatabaseReader
from pipeline.databases.aus import CD6ME_AU_COLUMNS
from pipeline.databases.index import (
    BASE_COLUMNS,
    EMOTION_COLUMNS,
    ISSUE_COLUMNS,
    IndexBuildError,
    IndexOptions,
    build_index,
    check_databases,
    frame_numbers,
    frame_paths,
    load_issues,
    load_samples,
    resolve_roots,
    write_index,
)
from pipeline.params import ParamsError
from stages import index as stage

PROJECT = Path(__file__).resolve().parents[1]
LENIENT = IndexOptions(max_bad_share=0.5)


def test_resolve_roots():
    data = {"source": "standin", "databases": ["samm", "casme2"], "roots": {}}
    assert resolve_roots(data, "data/standin") == {"samm": Path("data/standin/samm"),
                                                    "casme2": Path("data/standin/casme2")}
    real = {"source": "real", "databases": ["casme2"], "roots": {"casme2": "/d/CASME2",
                                                                  "samm": "/d/SAMM"}}
    assert resolve_roots(real) == {"casme2": Path("/d/CASME2")}
    with pytest.raises(ParamsError, match=r"data.roots has no folder for \['samm'\]"):
        resolve_roots(dict(real, databases=["casme2", "samm", "smic"],
                           roots={"casme2": "x", "smic": "y"}))
    with pytest.raises(ParamsError, match="unknown key"):
        resolve_roots(dict(data, databases=["casme4"]), "data/standin")
    with pytest.raises(ParamsError, match="more than once"):
        resolve_roots(dict(data, databases=["samm", "samm"]), "data/standin")
    with pytest.raises(ParamsError, match="data.source must be"):
        resolve_roots(dict(data, source="mixed"), "data/standin")
    with pytest.raises(ParamsError, match="standin.out is not set"):
        resolve_roots(data, None)


def test_index_options():
    assert IndexOptions.from_params({"max_bad_share": 0.1, "drop_k_marked_aus": False,
                                     "au_alternatives": "first"}) == IndexOptions(
        0.1, False, "first")
    with pytest.raises(ParamsError, match="unknown key"):
        IndexOptions.from_params({"max_bad": 0.1})
    with pytest.raises(ParamsError, match="fraction in"):
        IndexOptions(max_bad_share=1.5)
    with pytest.raises(ParamsError, match="au_alternatives must be one of"):
        IndexOptions(au_alternatives="both")


def test_project_params_and_dvc_stage():
    prm = yaml.safe_load((PROJECT / "params.yaml").read_text())
    IndexOptions.from_params(prm["index"])
    assert resolve_roots(prm["data"], prm["standin"]["out"]).keys() <= set(KEYS)
    stage_def = yaml.safe_load((PROJECT / "dvc.yaml").read_text())["stages"]["index"]
    assert stage_def["cmd"] == "python -m stages.index"
    assert stage_def["outs"] == ["data/index", {"metrics/stages/index.json": {"cache": False}}]
    assert {"data", "index", "standin.out"} <= set(stage_def["params"])


def test_build_index_table(tmp_path):
    result = build_index(build_all(tmp_path), LENIENT)
    df = result.samples
    others = ["AU24", "AU28", "AU43", "AU45"]
    assert list(df.columns) == [*BASE_COLUMNS, *CD6ME_AU_COLUMNS, *others, *EMOTION_COLUMNS]
    assert list(df["sample_id"]) == sorted(df["sample_id"])
    assert df["sample_id"].is_unique
    assert df.groupby("database").size().to_dict() == {
        "casme": 4, "casme2": 6, "samm": 5, "mmew": 3, "fourd": 4, "casme3a": 4, "smic": 3}
    assert list(result.summary) == list(KEYS)
    assert result.summary["casme3a"] == {"rows": 5, "kept": 4, "fixed": 0, "dropped": 1,
                                         "filtered": 0, "unreadable": 0, "noted": 0}
    assert sum(s["dropped"] for s in result.summary.values()) == 8
    assert len(result.issues) == 21
    assert list(result.issues.columns) == list(ISSUE_COLUMNS)
    assert set(result.issues["action"]) == {"fixed", "dropped", "unreadable"}
    # label columns are 0/1 ints and agree with the readers
    labels = [*CD6ME_AU_COLUMNS, *others]
    assert set(pd.unique(df[labels].values.ravel())) == {0, 1}
    row = df.set_index("sample_id").loc["samm/007/007_3_3"]
    assert [c for c in labels if row[c]] == ["AU14", "AU28"]
    assert (row["emotion"], row["emotion5"], row["emotion3"]) == ("disgust", "", "negative")
    assert df.loc[df.database == "smic", labels].to_numpy().sum() == 0
    # every frame list covers onset..offset
    for _, r in df.iterrows():
        numbers = frame_numbers(r)
        assert numbers[0] == r.onset and numbers[-1] == r.offset and r.apex in numbers
        assert len(numbers) == r.n_frames
        assert all(p.is_file() for p in frame_paths(r))


def test_too_many_unusable_rows_fail_with_counts(tmp_path):
    roots = build_all(tmp_path)
    with pytest.raises(IndexBuildError) as err:
        build_index(roots)  # default max_bad_share 0.2
    msg = str(err.value)
    assert "casme: 2 of 6 sample rows unusable (33% > index.max_bad_share 20%)" in msg
    assert "casme2: 2 of 8 sample rows unusable" in msg
    assert "frames folder missing x1" in msg
    for ok in ("samm:", "fourd:", "casme3a:"):  # 1/6, 0/4, 1/5 (not more than 20 %)
        assert ok not in msg


def test_all_databases_are_checked_before_any_row_is_read(tmp_path, monkeypatch):
    roots = build_all(tmp_path, ["casme2", "samm", "smic"])
    (roots["casme2"] / "CASME2-coding-20140508.xlsx").unlink()
    shutil.rmtree(roots["smic"] / "HS")
    roots["mmew"] = tmp_path / "no-mmew"

    def no_reading(self):
        raise AssertionError("read before every database was checked")

    monkeypatch.setattr(DatabaseReader, "read", no_reading)
    with pytest.raises(DatabaseError) as err:
        build_index(roots)
    lines = str(err.value).splitlines()
    assert lines[0] == "3 of the 4 configured databases cannot be read (nothing was indexed):"
    assert "CASME2-coding-20140508.xlsx" in lines[1]
    assert "HS: SMIC-HS frame folder not found" in lines[2]
    assert "mmew: database root" in lines[3] and "no-mmew" in lines[3]
    assert [r.key for r in check_databases({"samm": roots["samm"]})] == ["samm"]


def test_write_and_load_round_trip(tmp_path):
    result = build_index(build_all(tmp_path / "raw"), LENIENT)
    out = write_index(result, tmp_path / "index")
    assert sorted(p.name for p in out.iterdir()) == ["frames.csv", "issues.csv", "samples.csv",
                                                     "summary.json"]
    df = load_samples(out)
    pd.testing.assert_frame_equal(df, result.samples, check_dtype=False)
    assert df["subject"][df.database == "samm"].tolist() == ["006", "006", "007", "007", "007"]
    assert df["emotion5"][df.database == "smic"].tolist() == ["", "", ""]
    assert df["onset"].dtype == "int64" and df["AU12"].dtype == "int64"
    assert json.loads((out / "summary.json").read_text()) == result.summary
    issues = load_issues(out)
    assert issues["row"].dtype == "int64" and len(issues) == len(result.issues)
    # a row as a namedtuple works too
    first = next(df.itertuples())
    assert frame_paths(first)[0] == Path(first.frame_dir) / first.frames.split("|")[0]
    assert frame_paths({"frame_dir": "a", "frames": "x1.jpg|x2.jpg"}, base="/r") == [
        Path("/r/a/x1.jpg"), Path("/r/a/x2.jpg")]
    assert frame_numbers({"frames": "img9.jpg|img10.jpg"}) == [9, 10]


def test_load_samples_rejects_other_tables(tmp_path):
    (tmp_path / "samples.csv").write_text("sample_id,database\na,b\n")
    with pytest.raises(ValueError, match="missing columns"):
        load_samples(tmp_path)
    with pytest.raises(FileNotFoundError, match="run `dvc repro index`"):
        load_samples(tmp_path / "nothing")


def _params(path: Path, roots: dict[str, Path], **index) -> Path:
    prm = {
        "config": "quick",
        "data": {"source": "real", "roots": {k: str(v) for k, v in roots.items()},
                 "databases": list(roots)},
        "standin": {"out": "data/standin"},
        "index": {"max_bad_share": 0.5, "drop_k_marked_aus": True, "au_alternatives": "all",
                  **index},
    }
    path.write_text(yaml.safe_dump(prm, sort_keys=False))
    return path


def test_stage_main(tmp_path, capsys):
    roots = build_all(tmp_path / "raw", ["casme2", "samm"])
    out = tmp_path / "index"
    assert stage.main(["--params", str(_params(tmp_path / "params.yaml", roots)),
                       "--out", str(out)]) == 0
    assert len(load_samples(out)) == 11
    lines = capsys.readouterr().err.splitlines()  # the stage logs to stderr
    assert "index: casme2: 8 rows -> 6 kept (3 fixed, 0 with unreadable cells, 0 noted), 2 " \
           "dropped, 0 filtered [CASME2-coding-20140508.xlsx]" in lines
    assert any(line.startswith("index: samm: 6 rows -> 5 kept") for line in lines)


def test_stage_fails_clearly_and_writes_nothing(tmp_path, capsys):
    roots = {"casme2": build_casme2(tmp_path / "raw" / "casme2"),
             "samm": build_samm(tmp_path / "raw" / "samm")}
    (roots["samm"] / "SAMM_Micro_FACS_Codes_v2.xlsx").unlink()
    out = tmp_path / "index"
    status = stage.main(["--params", str(_params(tmp_path / "params.yaml", roots)),
                         "--out", str(out)])
    assert status == 1 and not out.exists()
    assert "SAMM_Micro_FACS_Codes_v2.xlsx: SAMM annotation file not found" in (
        capsys.readouterr().err)
    # too many unusable rows
    roots["samm"] = build_samm(tmp_path / "raw" / "samm")
    status = stage.main(["--params", str(_params(tmp_path / "params.yaml", roots,
                                                   max_bad_share=0.1)), "--out", str(out)])
    assert status == 1 and not out.exists()
    assert "casme2: 2 of 8 sample rows unusable" in capsys.readouterr().err


def _dvc_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["DVC_NO_ANALYTICS"] = "1"
    env["PYTHONPATH"] = ""  # the stage imports the repository's own copy of pipeline/
    return env


@pytest.mark.slow
def test_dvc_repro_index(tmp_path):
    """``dvc repro index`` on the project's own stage definition, with real-data roots."""
    dvc = Path(sys.executable).parent / "dvc"  # dvc is a declared dependency (pyproject.toml)
    assert dvc.is_file(), f"no dvc executable beside {sys.executable}: install the project"
    repo = tmp_path / "repo"
    (repo / "pipeline").mkdir(parents=True)
    for name in ("__init__.py", "params.py", "params_schema.py", "io.py"):
        shutil.copy(PROJECT / "pipeline" / name, repo / "pipeline" / name)
    (repo / "pipeline" / "training").mkdir()
    for name in ("__init__.py", "families.py"):  # the method families' params schema
        shutil.copy(PROJECT / "pipeline" / "training" / name, repo / "pipeline" / "training" / name)
    shutil.copytree(PROJECT / "pipeline" / "databases", repo / "pipeline" / "databases",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (repo / "stages").mkdir()
    for name in ("__init__.py", "index.py"):
        shutil.copy(PROJECT / "stages" / name, repo / "stages" / name)
    stage_def = yaml.safe_load((PROJECT / "dvc.yaml").read_text())["stages"]["index"]
    stage_def["deps"] = [d for d in stage_def["deps"] if d != "data/standin"]  # real data here
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"index": stage_def}}))
    roots = build_all(repo / "raw", ["casme2", "samm", "casme3a"])
    _params(repo / "params.yaml", {k: v.relative_to(repo) for k, v in roots.items()})

    env = _dvc_env()

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(args, cwd=repo, env=env, capture_output=True, text=True,
                              timeout=120)

    assert run("git", "init", "-q").returncode == 0
    init = run(str(dvc), "init", "-q")
    assert init.returncode == 0, init.stderr
    first = run(str(dvc), "repro", "index")
    assert first.returncode == 0, first.stdout + first.stderr
    assert "casme2: 8 rows -> 6 kept" in first.stdout + first.stderr

    df = load_samples(repo / "data" / "index")
    assert df.groupby("database").size().to_dict() == {"casme2": 6, "casme3a": 4, "samm": 5}
    assert df["frame_dir"].str.startswith("raw/").all()  # relative to the project root
    assert all((repo / p).is_file() for _, r in df.iterrows() for p in frame_paths(r))
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]["index"]
    assert lock["params"]["params.yaml"]["index"]["au_alternatives"] == "all"
    assert [o["path"] for o in lock["outs"]] == ["data/index", "metrics/stages/index.json"]
    assert json.loads((repo / "metrics/stages/index.json").read_text())["stage"] == "index"

    again = run(str(dvc), "repro", "index")
    assert again.returncode == 0 and "didn't change" in again.stdout + again.stderr
    # a parameter of the section re-runs the stage
    _params(repo / "params.yaml", {k: v.relative_to(repo) for k, v in roots.items()},
            au_alternatives="first")
    third = run(str(dvc), "repro", "index")
    assert third.returncode == 0, third.stdout + third.stderr
    samm = load_samples(repo / "data" / "index").set_index("sample_id").loc["samm/007/007_3_1"]
    assert (samm["AU12"], samm["AU15"]) == (1, 0)
