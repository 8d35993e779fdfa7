"""DVC stage ``faces``: face crops, landmarks and crop boxes → ``data/features/faces.h5``.

Reads ``data/index/samples.csv`` and the frames it lists, the ``faces`` and ``parallel`` sections
of params.yaml; writes ``faces.h5`` and ``faces_failures.csv`` (library: pipeline.features.faces).
"""

from __future__ import annotations

import sys
from typing import Any

from pipeline.features.faces import load_index, run_faces
from pipeline.features.stage import StageSummary, stage_cli
from pipeline.params import section


def _run(paths: dict[str, Any], params: dict[str, Any]) -> StageSummary:
    return run_faces(load_index(paths["index"]), section("faces", params), paths["out"],
                     paths["failures"], section("parallel", params), source=paths["index"])


if __name__ == "__main__":
    sys.exit(stage_cli("faces", __doc__, {"index": "data/index/samples.csv"}, _run))
