"""Reading ``params.yaml`` and resolving the quick / paper switch and the quick training budget.

Every section of ``params.yaml`` holds the quick configuration's values and may carry a
``paper:`` block; with the top-level ``config: paper`` the keys of that block override the
section's own (recursively for nested mappings).  Stages call :func:`section` and never look at
``paper:`` themselves.

Training budget (``train.budget``, ours; issue #12): a ``methods.<name>`` section may also carry a
``learn:`` block, the longer quick budget under which that method beats the constant predictors
on the stand-in.  With ``train.budget: learn`` (and ``config: quick``) its keys override the
section's own before any ``paper:`` block would; with ``train.budget: quick`` (the default: the
whole quick ``dvc repro`` within 20 minutes on 2 CPU cores) and under ``config: paper`` the
``learn:`` blocks are ignored.  :func:`apply_budget` does this on the whole file and
:func:`method_params` for one method; only the ``train@<method>`` stages
depend on ``train``, so ``dvc exp run -S train.budget=learn`` re-runs the training and not the
preprocessing.

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
#: Values of ``train.budget``: the methods' own quick values, or their ``learn:`` blocks.
BUDGETS = ("quick", "learn")


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

    The file is resolved for both configurations and both training budgets; an error that only
    the ``paper:`` blocks cause ends in ``(config: paper)``, one that only the methods' ``learn:``
    blocks cause in ``(train.budget: learn)``.
    """
    from pipeline.params_schema import check

    try:
        learned = apply_budget(dict(params, config="quick"), "learn")
    except ParamsError as exc:  # a learn: block that is not a mapping
        return [str(exc)]
    base = apply_budget(params, "quick")
    quick = check(resolve(base, "quick"))
    paper = [e for e in check(resolve(base, "paper")) if e not in quick]
    learn = [e for e in check(resolve(learned, "quick")) if e not in quick and e not in paper]
    return (quick + [f"{e} (config: paper)" for e in paper]
            + [f"{e} (train.budget: learn)" for e in learn])


def apply_budget(params: Mapping[str, Any], budget: str | None = None) -> dict[str, Any]:
    """A copy of the raw ``params`` with every ``methods.<name>.learn`` block applied or dropped.

    Parameters
    ----------
    params : mapping
        The raw parameter file (``paper:`` blocks not yet resolved).
    budget : {"quick", "learn"}, optional
        Default: the file's own ``train.budget`` (``"quick"`` when absent).  ``"learn"`` merges each
        method's ``learn:`` block over its section (recursively, before ``paper:`` blocks are
        resolved); ``"quick"`` drops the blocks.  Under ``config: paper`` the blocks are always
        dropped: the papers' settings do not depend on the quick budget.

    Raises
    ------
    ParamsError
        On an unknown budget, or a ``learn:`` that is not a mapping.
    """
    if budget is None:
        train = params.get("train")
        budget = train.get("budget", "quick") if isinstance(train, Mapping) else "quick"
    if budget not in BUDGETS:
        raise ParamsError(f"train.budget must be one of {BUDGETS}, got {budget!r}")
    out = dict(params)
    methods = params.get("methods")
    if not isinstance(methods, Mapping):
        return out
    use = budget == "learn" and params.get("config", "quick") == "quick"
    merged: dict[str, Any] = {}
    for name, block in methods.items():
        if not isinstance(block, Mapping) or "learn" not in block:
            merged[name] = block
            continue
        learn = block["learn"]
        if not isinstance(learn, Mapping):
            raise ParamsError(f"methods.{name}.learn: expected a mapping of the section's keys, "
                              f"got {learn!r}")
        base = {k: v for k, v in block.items() if k != "learn"}
        merged[name] = _merge(base, learn) if use else base
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

    Resolved for ``config`` (``paper:`` blocks) after ``train.budget`` is applied to the
    ``methods.<name>.learn`` blocks (:func:`apply_budget`).

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
    block and ``train.paper`` both apply under ``config: paper``, and the method's ``learn:``
    block under ``train.budget: learn`` (:func:`apply_budget`); ``budget`` itself is not passed
    on.  (Here rather than in :mod:`pipeline.training.run`, so that readers of the parameters,
    such as the report stage, do not import torch.)

    Raises
    ------
    ParamsError
        If ``methods.<name>`` does not exist.
    """
    shared = section("train", params) if "train" in params else {}
    shared.pop("budget", None)
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
