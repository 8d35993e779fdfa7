"""The stand-in benchmark: seven simulated micro-expression databases rendered on real faces.

Real photographs (Face Research Lab London Set, CC BY 4.0) are warped sub-pixel with FACS-shaped,
landmark-anchored displacement fields (:mod:`.aus`, :mod:`.render`) following a label plan with
CD6ME's AU statistics (:mod:`.labels`), per-database nuisances and sizes (:mod:`.profiles`), and
written in the exact layouts of the real releases (:mod:`.writers`), with the ground truth kept
apart.  Entry point: :func:`build_standin`; design: STANDIN.md, layouts: DATASETS.md.
"""

from pipeline.standin.build import build_standin, plan_only
from pipeline.standin.faces import StandinError, resolve_faces_dir
from pipeline.standin.labels import plan_standin
from pipeline.standin.profiles import CD6ME_KEYS, KEYS, get_profile

__all__ = ["CD6ME_KEYS", "KEYS", "StandinError", "build_standin", "get_profile", "plan_only",
           "plan_standin", "resolve_faces_dir"]
