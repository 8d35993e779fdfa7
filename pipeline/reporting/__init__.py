"""The ``report`` stage: published numbers (``published``), comparison tables (``report``) and
figures rendered with matplotlib's Agg backend (``plots``)."""
