"""Reading ``params.yaml`` and resolving the quick / paper switch and the training budget.

Every section of ``params.yaml`` holds the quick configuration's values and may carry a
``paper:`` block; with the top-level ``config: paper`` the keys of that block override the
section's own (recursively for nested mappings).  Stages call :func:`section` and never look at
``paper:`` themselves.

Training budget (``train.budget``; ours, issue #31): one rule for every learned method (every
``methods.<name>`` whose family is not ``constant``), applied by :func:`apply_budget` under
``config: quick``:

* ``learn`` (the default): each learned method trains ``train.learn_epochs[<protocol>]`` epochs,
  the same number of passes over the same training folds for every method of a protocol
  (``cd6me`` or ``loso``): equal sample-epochs, so equal optimiser steps at equal batch sizes.
  A method section that sets its own ``epochs`` keeps it (a user's experiment; the shipped file
  sets none, ``tests/test_core.py`` checks it).
* ``smoke``: every learned method trains ``train.smoke_epochs`` (default 1) epochs, whatever its
  section says: a check that everything runs, not a result.

Under ``config: paper`` the budget is ignored and the methods' ``paper:`` blocks give the papers'
epochs.  Only the ``train@<method>`` stages depend on ``train``, so
``dvc exp run -S train.budget=smoke`` re-runs the training and not the preprocessing.

:func:`load` checks the whole file against :mod:`pipeline.params_schema` (unknown keys, types,
ranges; both configurations) before a stage does any work.  ``./mer`` runs the same check before
``dvc`` (which removes a stage's outputs before running it)::

    python -m pipeline.params validate [params.yaml]     # exit 0, or one line per error and 2
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

CONFIGS = ("quick", "paper")
#: Values of ``train.budget`` (:func:`apply_budget`); the first is the default.
BUDGETS = ("learn", "smoke")
#: ``train.learn_epochs`` when the file gives none (the shipped file states its own).
LEARN_EPOCHS = {"cd6me": 10, "loso": 8}
#: The keys of ``train`` that describe the budget rather than the trainer.
BUDGET_KEYS = ("budget", "learn_epochs", "learn_longer", "smoke_epochs")


class ParamsError(ValueError):
    """``params.yaml`` is missing, malformed, or lacks a required key."""


def load(path: str | os.PathLike = "params.yaml", validate: bool = True) -> dict[str, Any]:
    """Load the whole parameter file and (by default) check it (:func:`errors`).

    Raises
    ------
    ParamsError
        If the file is missing, is not a YAML mapping, ``config`` is not quick/paper, or (with
        ``validate``) a key is unknown, of the wrong type or out of range: one line per error.
    """
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: parameter file not found (run from the project root)")
    try:
        with path.open(encoding="utf-8") as fh:
            params = yaml.safe_load(fh)
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML: {' '.join(str(exc).split())}") from None
    if not isinstance(params, dict):
        raise ParamsError(f"{path}: expected a YAML mapping at the top level")
    config = params.get("config", "quick")
    if config not in CONFIGS:
        raise ParamsError(f"{path}: config must be one of {CONFIGS}, got {config!r}")
    if validate:
        problems = errors(params)
        if problems:
            raise ParamsError("\n".join(f"{path}: {p}" for p in problems))
    return params


def errors(params: Mapping[str, Any]) -> list[str]:
    """Every error of ``params`` against :mod:`pipeline.params_schema`, one line each.

    The file is resolved for both configurations (under its own training budget, and its
    ``train`` section is checked as written); an error that only the ``paper:`` blocks cause ends
    in ``(config: paper)``.
    """
    from pipeline.params_schema import check

    train = params.get("train")
    raw = check({"train": resolve(train, "quick")}) if isinstance(train, Mapping) else []
    if raw:  # e.g. an unknown budget: resolving the methods under it would fail with less detail
        return raw
    try:
        base = apply_budget(params)
    except ParamsError as exc:  # a learn: block, a learn_epochs without the method's protocol
        return [str(exc)]
    quick = check(resolve(base, "quick"))
    paper = [e for e in check(resolve(base, "paper")) if e not in quick]
    return quick + [f"{e} (config: paper)" for e in paper]


def apply_budget(params: Mapping[str, Any], budget: str | None = None) -> dict[str, Any]:
    """A copy of the raw ``params`` with the training budget's epochs set in every learned method.

    Parameters
    ----------
    params : mapping
        The raw parameter file (``paper:`` blocks not yet resolved).
    budget : {"learn", "smoke"}, optional
        Default: the file's own ``train.budget`` (``"learn"`` when absent).  Under ``config:
        quick``, ``"learn"`` sets ``epochs`` to ``train.learn_epochs[<protocol>]`` in every
        learned method section that has no ``epochs`` of its own, or to
        ``train.learn_longer[<method>]`` for a method listed there (the rule's one exception: a
        method measured to stay under the learning bar at its protocol's epochs and to clear it
        with more; never fewer than the protocol's); ``"smoke"`` sets it to
        ``train.smoke_epochs`` (1) in every learned section.  Constant predictors (``family:
        constant``) are never touched; under ``config: paper`` nothing is.

    Raises
    ------
    ParamsError
        On an unknown budget; on a method section that still has a ``learn:`` block (replaced by
        the rule); on a learned method whose ``protocol`` has no entry in ``train.learn_epochs``;
        on a ``train.learn_longer`` entry that names no learned method section or gives fewer
        epochs than its protocol's.
    """
    train = params.get("train") if isinstance(params.get("train"), Mapping) else {}
    if budget is None:
        budget = train.get("budget", BUDGETS[0])
    if budget not in BUDGETS:
        hint = (" (quick was renamed: learn is the default, smoke trains one epoch)"
                if budget == "quick" else "")
        raise ParamsError(f"train.budget must be one of {BUDGETS}, got {budget!r}{hint}")
    out = dict(params)
    methods = params.get("methods")
    if not isinstance(methods, Mapping):
        return out
    learn_epochs = train.get("learn_epochs") or LEARN_EPOCHS
    longer = train.get("learn_longer") or {}
    smoke_epochs = train.get("smoke_epochs", 1)
    use = params.get("config", "quick") == "quick"
    merged: dict[str, Any] = {}
    for name, block in methods.items():
        if isinstance(block, Mapping) and "learn" in block:
            raise ParamsError(f"methods.{name}.learn: learn: blocks were replaced by one rule for "
                              f"every method (train.budget, train.learn_epochs); move its other "
                              f"keys into the section")
        if (not use or not isinstance(block, Mapping) or block.get("family") == "constant"
                or "protocol" not in block):  # no protocol: the schema check names the section
            merged[name] = block
            continue
        if budget == "smoke":
            merged[name] = dict(block, epochs=smoke_epochs)
        elif "epochs" in block:
            merged[name] = block
        else:
            protocol = block.get("protocol")
            if not isinstance(learn_epochs, Mapping) or protocol not in learn_epochs:
                raise ParamsError(f"methods.{name}: train.learn_epochs has no entry for its "
                                  f"protocol {protocol!r}")
            epochs = learn_epochs[protocol]
            if name in longer:
                if int(longer[name]) < int(epochs):
                    raise ParamsError(f"train.learn_longer.{name}: {longer[name]} epochs, fewer "
                                      f"than its protocol's train.learn_epochs.{protocol} "
                                      f"({epochs}); learn_longer only lengthens")
                epochs = longer[name]
            merged[name] = dict(block, epochs=epochs)
    if use and budget == "learn":
        unknown = sorted(str(m) for m in longer if not isinstance(methods.get(m), Mapping)
                         or methods[m].get("family") == "constant")
        if unknown:
            raise ParamsError(f"train.learn_longer names {unknown}, which are not learned method "
                              f"sections of methods:")
    out["methods"] = merged
    return out


def _merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(dict(base))
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def resolve(block: Mapping[str, Any], config: str) -> dict[str, Any]:
    """Return ``block`` with its ``paper:`` overrides applied when ``config == "paper"``.

    Nested mappings are resolved too, so a method's sub-sections may carry their own ``paper:``.
    The ``paper`` keys themselves are removed from the result.
    """
    if config not in CONFIGS:
        raise ParamsError(f"config must be one of {CONFIGS}, got {config!r}")
    base = {k: v for k, v in block.items() if k != "paper"}
    if config == "paper" and isinstance(block.get("paper"), Mapping):
        base = _merge(base, block["paper"])
    return {k: resolve(v, config) if isinstance(v, Mapping) else v for k, v in base.items()}


def section(name: str, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The resolved section ``name`` (dotted paths allowed, e.g. ``"methods.resnet18_flow"``).

    Resolved for ``config`` (``paper:`` blocks) after the training budget has set the learned
    methods' epochs (:func:`apply_budget`).

    Raises
    ------
    ParamsError
        If the section does not exist, or ``train.budget`` is not one of :data:`BUDGETS`.
    """
    params = apply_budget(load() if params is None else params)
    node: Any = params
    for part in name.split("."):
        if not isinstance(node, Mapping) or part not in node:
            raise ParamsError(f"params.yaml: section {name!r} not found")
        node = node[part]
    if not isinstance(node, Mapping):
        raise ParamsError(f"params.yaml: {name!r} is not a section (a mapping)")
    return resolve(node, params.get("config", "quick"))


def method_params(params: Mapping[str, Any], name: str) -> dict[str, Any]:
    """The resolved ``methods.<name>`` section merged over the shared ``train:`` section.

    Both are resolved for the ``config`` switch first (:func:`section`), so a method's ``paper:``
    block and ``train.paper`` both apply under ``config: paper``, and the training
    budget's epochs are set first (:func:`apply_budget`); the budget keys of ``train`` are not
    passed on.  (Here rather than in :mod:`pipeline.training.run`, so that readers of the parameters,
    such as the report stage, do not import torch.)

    Raises
    ------
    ParamsError
        If ``methods.<name>`` does not exist.
    """
    shared = section("train", params) if "train" in params else {}
    for key in BUDGET_KEYS:
        shared.pop(key, None)
    return _merge(shared, section(f"methods.{name}", params))


def env_or(value: str | None, env_var: str) -> str | None:
    """A configured path, else the environment variable ``env_var``, else ``None``."""
    if value not in (None, ""):
        return str(value)
    return os.environ.get(env_var) or None


def main(argv: list[str] | None = None) -> int:
    """``python -m pipeline.params validate [params.yaml]``: 0 when valid, else 2 and one line
    per error on stderr."""
    import argparse
    import sys

    ap = argparse.ArgumentParser(prog="python -m pipeline.params",
                                 description="check params.yaml against pipeline/params_schema.py")
    ap.add_argument("command", choices=["validate"])
    ap.add_argument("path", nargs="?", default="params.yaml")
    args = ap.parse_args(argv)
    try:
        load(args.path)
    except ParamsError as exc:
        print(exc, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
