"""DVC stage ``flow_mag``: TV-L1 flow onset → magnified apex and offset → magnified apex.

Reads ``data/features/faces.h5``, ``data/features/magnified.h5`` and the ``flow_mag``, ``flow``
and ``parallel`` sections of params.yaml; writes ``data/features/flow_mag.h5`` and
``flow_mag_failures.csv`` (the On-A / Off-A inputs of Ruan et al. 2022; library:
pipeline.features.flow_mag).
"""

from __future__ import annotations

import sys
from typing import Any

from pipeline.features.flow_mag import run_flow_mag
from pipeline.features.stage import StageSummary, stage_cli
from pipeline.params import section


def _run(paths: dict[str, Any], params: dict[str, Any]) -> StageSummary:
    return run_flow_mag(paths["faces"], paths["magnified"], section("flow_mag", params),
                        section("flow", params), paths["out"], paths["failures"],
                        section("parallel", params))


if __name__ == "__main__":
    sys.exit(stage_cli("flow_mag", __doc__, {"faces": "data/features/faces.h5",
                                             "magnified": "data/features/magnified.h5"}, _run))
