"""DVC stage ``patches``: dlib landmarks, region patches, eyes/mouth halves → ``patches.h5``.

Reads ``data/features/faces.h5``, the magnified apex frames of ``data/features/magnified.h5``
listed in ``patches.magnified`` (GAM-MM-MER's landmarks on the magnified apex), and the ``patches``
and ``parallel`` sections of params.yaml; writes ``data/features/patches.h5`` and
``patches_failures.csv`` (library: pipeline.features.patches).
"""

from __future__ import annotations

import sys
from typing import Any

from pipeline.features.patches import run_patches
from pipeline.features.stage import StageSummary, stage_cli
from pipeline.params import section


def _run(paths: dict[str, Any], params: dict[str, Any]) -> StageSummary:
    return run_patches(paths["faces"], section("patches", params), paths["out"],
                       paths["failures"], section("parallel", params),
                       magnified_path=paths["magnified"])


if __name__ == "__main__":
    sys.exit(stage_cli("patches", __doc__, {"faces": "data/features/faces.h5",
                                          "magnified": "data/features/magnified.h5"}, _run))
