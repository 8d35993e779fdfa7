"""DVC stage ``flow``: TV-L1 optical flow and optical strain → ``data/features/flow.h5``.

Reads ``data/features/faces.h5`` and the ``flow`` and ``parallel`` sections of params.yaml;
writes ``flow.h5`` and ``flow_failures.csv`` (library: pipeline.features.flow).
"""

from __future__ import annotations

import sys
from typing import Any

from pipeline.features.flow import run_flow
from pipeline.features.stage import StageSummary, stage_cli
from pipeline.params import section


def _run(paths: dict[str, Any], params: dict[str, Any]) -> StageSummary:
    return run_flow(paths["faces"], section("flow", params), paths["out"], paths["failures"],
                    section("parallel", params))


if __name__ == "__main__":
    sys.exit(stage_cli("flow", __doc__, {"faces": "data/features/faces.h5"}, _run))
