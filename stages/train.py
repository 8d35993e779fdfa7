"""DVC stage ``train@<method>``: run one method under its protocol's folds.

    python -m stages.train <method>

Reads ``data/index/samples.csv``, the feature caches the method needs (``data/features/*.h5``)
and the parameters ``config``, ``seed``, ``data.source``, ``standin.profile``, ``train`` (shared
trainer defaults) and ``methods.<method>`` (which overrides ``train``); writes
``models/<method>/``, ``metrics/<method>/`` (with ``detail.json``, the full metrics record, and
``stage.json``, the stage's wall time) and ``metrics/<method>.json`` (the headline numbers DVC
shows; ARCHITECTURE.md, "Metrics files"), atomically.  With ``train.seeds`` (or ``methods.<method>.seeds``) a list, the method is trained
once per seed and ``metrics/<method>.json`` holds the mean and ``sd`` over the seeds
(:mod:`pipeline.training.seeds`).  The section ``execution`` (not a DVC parameter of the stage: it
changes where the folds run, not what they compute) runs them here or as tasks on a Dask cluster
(:mod:`pipeline.training.execution`); the scheduler is reached before any work.  Library:
:mod:`pipeline.training`.
"""

from __future__ import annotations

import argparse
import logging
import sys

from pipeline.features.cache import CacheError
from pipeline.io import atomic_dir, record_stage_time, start_stage
from pipeline.parallel import SchedulerError
from pipeline.params import ParamsError, load, method_params, section
from pipeline.reporting.published import published_for
from pipeline.training.data import read_samples
from pipeline.training.execution import open_runner
from pipeline.training.registry import MethodError
from pipeline.training.run import data_label
from pipeline.training.seeds import resolve_seeds, run_method_seeds
from pipeline.training.trainer import TrainingError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("method", help="a section name under methods: in params.yaml")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--samples", default="data/index/samples.csv")
    parser.add_argument("--features", default="data/features")
    parser.add_argument("--models", default="models")
    parser.add_argument("--metrics", default="metrics")
    args = parser.parse_args(argv)
    start_stage("train")
    log = logging.getLogger("train")

    try:
        params = load(args.params)
        mparams = method_params(params, args.method)
        seeds = resolve_seeds(mparams.get("seeds"), int(params.get("seed", 0)))
        published = published_for(mparams.get("published"))
        execution = section("execution", params) if "execution" in params else {}
        with open_runner(execution) as runner:
            samples = read_samples(args.samples)
            with atomic_dir(f"{args.models}/{args.method}") as models_tmp, \
                    atomic_dir(f"{args.metrics}/{args.method}") as metrics_tmp:
                run_method_seeds(args.method, mparams, samples, args.features, models_tmp,
                                 metrics_tmp, f"{args.metrics}/{args.method}.json",
                                 data_label(params), seeds,
                                 published.as_dict() if published else None, runner=runner)
                record_stage_time(f"train@{args.method}", metrics_tmp / "stage.json",
                                  seeds=[int(s) for s in seeds])
    except (ParamsError, MethodError, CacheError, TrainingError, FileNotFoundError,
            KeyError, ValueError, SchedulerError) as exc:
        # Bad parameters or inputs: one line per problem, no traceback (params.yaml's own
        # errors are one line each already).
        for line in str(exc).strip("'\"").splitlines():
            log.error("%s: %s", args.method, line)
        return 1
    log.info("%s: wrote %s/%s.json", args.method, args.metrics, args.method)
    return 0


if __name__ == "__main__":
    sys.exit(main())
