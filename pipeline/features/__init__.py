"""Cached features: face crops (``faces``), TV-L1 flow and optical strain (``flow``), landmark
patches (``patches``); the HDF5 cache format they share (``cache``)."""
