"""DVC stage ``index``: read every configured database and write the sample table.

    python -m stages.index [--params params.yaml] [--out data/index]

Reads the ``params.yaml`` sections ``data`` (``source``, ``databases``, ``roots``), ``index``
(``max_bad_share``, ``drop_k_marked_aus``, ``au_alternatives``) and, with ``data.source:
standin``, ``standin.out``; calls :mod:`pipeline.databases.index`; writes ``data/index/``
(``samples.csv``, ``issues.csv``, ``summary.json``) atomically and logs one line per database.
A misconfigured database (missing root, annotation file, column, frame tree) or too many unusable
rows end the stage with exit status 1 and one message naming the files and counts; nothing is
written then.
"""

from __future__ import annotations

import argparse
import logging
import sys

from pipeline import params
from pipeline.databases.base import DatabaseError
from pipeline.databases.index import (
    IndexBuildError,
    IndexOptions,
    build_index,
    resolve_roots,
    write_index,
)
from pipeline.io import record_stage_time, stage_time_path, start_stage

log = logging.getLogger("index")


def main(argv: list[str] | None = None) -> int:
    """Run the stage; returns the process exit status (0 on success, 1 on bad input)."""
    parser = argparse.ArgumentParser(prog="python -m stages.index", description=__doc__.split(
        "\n\n")[0])
    parser.add_argument("--params", default="params.yaml", help="parameter file")
    parser.add_argument("--out", default="data/index", help="output folder")
    args = parser.parse_args(argv)
    start_stage("index")
    data: dict = {}
    try:
        prm = params.load(args.params)
        data = params.section("data", prm)
        options = IndexOptions.from_params(params.section("index", prm))
        standin_out = (params.section("standin", prm).get("out")
                       if data.get("source") == "standin" else None)
        roots = resolve_roots(data, standin_out)
        log.info("reading %d databases (source: %s): %s", len(roots), data.get("source"),
                 ", ".join(f"{k}={v}" for k, v in roots.items()))
        result = build_index(roots, options)
    except (params.ParamsError, DatabaseError, IndexBuildError) as exc:
        log.error("%s", exc)
        if isinstance(exc, DatabaseError):
            source = data.get("source")
            log.error("%s", "data.source is standin: the stand-in is built by `dvc repro standin`"
                      if source == "standin" else "point data.roots.<key> in params.yaml at the "
                      "folder holding the release's annotation file and frame tree")
        return 1
    write_index(result, args.out)
    for r in result.results:
        s = r.summary()
        log.info("%s: %d rows -> %d kept (%d fixed, %d with unreadable cells, %d noted), "
                 "%d dropped, %d filtered [%s]", r.database, s["rows"], s["kept"], s["fixed"],
                 s["unreadable"], s["noted"], s["dropped"], s["filtered"], r.spreadsheet.name)
    log.info("wrote %s: %d samples, %d AU columns, %d issues", args.out, len(result.samples),
             sum(c.startswith("AU") for c in result.samples.columns), len(result.issues))
    record_stage_time("index", stage_time_path("index", args.params))
    return 0


if __name__ == "__main__":
    sys.exit(main())
