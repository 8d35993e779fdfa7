"""Reference pipeline for facial micro-expression analysis.

Sub-packages: ``databases`` (one reader per released database and the ``index`` table),
``standin`` (the simulated benchmark rendered on real faces), ``features`` (face crops, TV-L1
flow and optical strain, landmark patches, HDF5 caches), ``magnification`` (learned motion
magnifiers), ``models`` (one module per method), ``training`` (protocols, metrics, trainer) and
``reporting``.  Stage entry points live in ``stages/``; parameters in ``params.yaml``.
"""

__version__ = "0.1.0"
