"""The schema of ``params.yaml``: every key of every section, its type, range and default.

``python -m pipeline.params validate`` (run by ``./mer`` before ``dvc``) and every stage (through
:func:`pipeline.params.load`) check the file against it before any work, so that a typo
(``methods.sssnet.epcohs``), a wrong type (``epochs: ten``) or an out-of-range value
(``lr: -1``) ends in one line naming the key, never in a traceback deep in a stage or a run that
silently uses a default.  Unknown keys are rejected with the closest valid name suggested.  The
file is checked as resolved for both ``config: quick`` and ``config: paper``, so a typo inside a
``paper:`` block is caught in quick runs too.

HOW TO ADD A KEY
    A general section (data, index, faces, flow, …): add ``"key": Int(default, min=…)`` (or
    ``Float``, ``Bool``, ``Str``, ``List``, ``Map``, ``Dict``, ``OneOf``, ``Free``) to its entry of
    :data:`SECTIONS` below.  A shared trainer key (``train:`` and every ``methods.<name>``): add it
    to :data:`TRAIN_KEYS`.  A key of one method family, or a new family: see
    ``pipeline/training/families.py``.  The test ``tests/test_params_schema.py`` validates the
    shipped ``params.yaml`` in both configurations, so an undeclared key fails CI.

Choices left open: keys are optional (the code holds the defaults; ``default`` here documents
them); ``null`` is accepted only where declared (``nullable=True``); an integer is accepted where
a float is expected, a bool never counts as a number; free-form blocks (``Free``) are checked by
the code that reads them (e.g. ``methods.ac4au.model`` by ``pipeline.models.ac4au``).
This module imports neither torch nor the method registry (validation takes milliseconds).
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Key:
    """One parameter: ``kind`` (int, float, bool, str, list, map, dict, oneof, free), its default
    (documentation), and the checks: ``choices``, ``min``/``max`` (inclusive), list ``item`` and
    ``length``, ``keys`` of a map (fixed names), ``value`` of a dict (free names), ``options`` of a
    oneof."""

    kind: str
    default: Any = None
    nullable: bool = False
    choices: tuple = ()
    min: float | None = None
    max: float | None = None
    gt: float | None = None
    item: Key | None = None
    length: int | None = None
    keys: Mapping[str, Key] | None = None
    value: Key | None = None
    options: tuple[Key, ...] = ()
    what: str = ""


def Int(default: Any = None, *, min: float | None = None, max: float | None = None,  # noqa: N802
        nullable: bool = False) -> Key:
    return Key("int", default, nullable, min=min, max=max)


def Float(default: Any = None, *, min: float | None = None, max: float | None = None,  # noqa: N802
          gt: float | None = None, nullable: bool = False) -> Key:
    """A number (an int is accepted); ``gt``: strictly greater than."""
    return Key("float", default, nullable, min=min, max=max, gt=gt)


def Bool(default: Any = None, *, nullable: bool = False) -> Key:  # noqa: N802
    return Key("bool", default, nullable)


def Str(default: Any = None, *, choices: Sequence[str] = (), nullable: bool = False,  # noqa: N802
        what: str = "") -> Key:
    return Key("str", default, nullable, choices=tuple(choices), what=what)


def List(item: Key, default: Any = None, *, length: int | None = None,  # noqa: N802
         nullable: bool = False) -> Key:
    return Key("list", default, nullable, item=item, length=length)


def Map(keys: Mapping[str, Key], *, nullable: bool = False) -> Key:  # noqa: N802
    """A mapping with fixed key names (unknown names are rejected)."""
    return Key("map", None, nullable, keys=dict(keys))


def Dict(value: Key, *, nullable: bool = False) -> Key:  # noqa: N802
    """A mapping with free key names (e.g. database keys), every value checked by ``value``."""
    return Key("dict", None, nullable, value=value)


def OneOf(*options: Key, default: Any = None, nullable: bool = False, what: str = "") -> Key:  # noqa: N802
    """The first option that accepts the value wins (e.g. ``pretrained``: a bool or a path)."""
    return Key("oneof", default, nullable, options=options, what=what)


def Free(what: str = "a mapping") -> Key:  # noqa: N802
    """Anything; checked by the code that reads it."""
    return Key("free", what=what)


PATH = Str(nullable=True, what="a path")
SHARE = Float(min=0.0, max=1.0)
DEVICE = Str("auto", choices=("auto", "cpu", "cuda"))
THREADS = Int(None, min=1, nullable=True)

# --------------------------------------------------------------------------------------------
# Shared trainer keys: valid in ``train:`` and in every ``methods.<name>`` (which overrides them;
# pipeline.training.trainer.TrainSettings and pipeline.training.run).
# --------------------------------------------------------------------------------------------
OPTIMIZER = Map({"name": Str("adam", choices=("adam", "adamw", "sgd")),
                 "lr": Float(1e-3, gt=0.0), "weight_decay": Float(0.0, min=0.0),
                 "momentum": Float(0.9, min=0.0), "betas": List(Float(min=0.0, max=1.0), length=2)})
SCHEDULER = Map({"name": Str("none", choices=("none", "exponential", "step",
                                              "cosine_warm_restarts", "one_cycle")),
                 "gamma": Float(gt=0.0), "step_size": Int(min=1), "t0": Int(min=1),
                 "t_mult": Int(min=1), "eta_min": Float(min=0.0),
                 "pct_start": Float(gt=0.0, max=1.0), "div_factor": Float(gt=0.0)})
LOSS = Map({"pos_weight": Str(None, choices=("balanced",), nullable=True),
            "pos_weight_max": Float(20.0, min=1.0),
            "class_weights": Str(None, choices=("inverse",), nullable=True)})

TRAIN_KEYS: dict[str, Key] = {
    "device": DEVICE,
    "amp": Bool(True),
    "num_workers": Int(0, min=0),
    "preload": Bool(True),
    "selection": Str("last", choices=("last", "inner_val")),
    "val_share": Float(0.2, min=0.0, max=0.9),
    "threshold": Float(0.5, min=0.0, max=1.0),
    # true | false | a list of fold names or fnmatch patterns (pipeline.training.run)
    "save_checkpoints": OneOf(Bool(), List(Str()), default=True,
                              what="true, false or a list of fold names/patterns"),
    "flow_norm": Str("sample", choices=("sample", "none")),
    "flow_quantile": Float(0.99, min=0.5, max=1.0),
    "eval_batch_size": Int(64, min=1),
    "epochs": Int(10, min=1),
    "batch_size": Int(32, min=1),
    "optimizer": OPTIMIZER,
    "scheduler": SCHEDULER,
    "loss": LOSS,
    "grad_clip": Float(None, min=0.0, nullable=True),
    "final_model": Bool(False),  # models/<method>/final.pt fitted on all data (pipeline/training/final.py)
    "final_task": Str("composite-3", choices=("casme2-5", "casme2-3", "samm-5", "samm-3", "smic-3",
                                              "composite-3")),
    # training seeds (pipeline.training.seeds): null = [seed]; a list = one run per seed
    "seeds": List(Int(min=0), None, nullable=True),
}

#: The ``execution`` section (pipeline.training.execution.ExecutionSettings): where and how the
#: training stages run.  Switching them changes no result, so dvc.yaml lists none of them.
EXECUTION_KEYS: dict[str, Key] = {
    "backend": Str("local", choices=("local", "dask")),
    "scheduler": Str(None, nullable=True, what="a Dask scheduler address (tcp://host:port)"),
    "workers": Int(-1),  # LocalCluster worker processes (scheduler null); -1: all cores
    "torch_threads": THREADS,
    "retries": Int(1, min=0),
    "task_resources": OneOf(Str(choices=("auto",)), Dict(Float(gt=0.0)), default="auto",
                            nullable=True, what="auto, null or a mapping such as {GPU: 1}"),
    "connect_timeout": Float(30.0, gt=0.0),
}

#: Keys every ``methods.<name>`` section may hold besides :data:`TRAIN_KEYS` and its family's.
METHOD_KEYS: dict[str, Key] = {
    "family": Str(what="a method family"),
    "task": Str("au", choices=("au", "emotion")),
    "protocol": Str("cd6me", choices=("cd6me", "loso")),
    "tasks": List(Str(choices=("casme2-5", "casme2-3", "samm-5", "samm-3", "smic-3",
                               "composite-3")), nullable=True),
    "published": Str(None, nullable=True, what="a key of pipeline/reporting/published.py"),
}

# --------------------------------------------------------------------------------------------
# The general sections.  Add a key to its section here (see the module docstring).
# --------------------------------------------------------------------------------------------
DATABASES = ("casme", "casme2", "samm", "mmew", "fourd", "casme3a", "smic")
SYNTHETIC = Map({
    "faces_dir": PATH, "verify_every": Int(5, min=2), "photo_size": Int(512, min=16),
    "size": Int(32, min=8), "alpha_min": Float(1.0, min=0.0), "alpha_max": Float(100.0, min=0.0),
    "max_input_motion": Float(2.0, min=0.0), "min_input_motion": Float(0.0, min=0.0),
    "max_magnified_motion": Float(8.0, min=0.0),
    "photo_share": SHARE, "p_static_background": SHARE, "p_low_contrast": SHARE,
    "max_objects": Int(3, min=0), "noise_max": Float(3.0, min=0.0), "color_perturb": Bool()})
_MAGNIFIER_TRAIN = {"iterations": Int(1200, min=1), "batch_size": Int(4, min=1),
                    "lr": Float(1e-3, gt=0.0),
                    "lr_schedule": Str("cosine", choices=("constant", "cosine")),
                    "grad_clip": Float(None, min=0.0, nullable=True),
                    "warmup": Int(0, min=0)}  # linear warm-up steps before the schedule

_PRETRAIN_STUDENT = {"input_size": Int(40, min=16), "steps": Int(400, min=1),
                     "batch_size": Int(32, min=1), "lr": Float(3e-3, gt=0.0),
                     "weight_decay": Float(1e-4, min=0.0)}

SECTIONS: dict[str, Key] = {
    "config": Str("quick", choices=("quick", "paper")),
    "seed": Int(0, min=0),
    "data": Map({
        "source": Str("standin", choices=("standin", "real")),
        "roots": Dict(PATH),
        "databases": List(Str(choices=DATABASES)),
    }),
    "standin": Map({
        "profile": Str("quick", choices=("quick", "full", "tiny")),
        "seed": Int(None, min=0, nullable=True),
        "faces_dir": PATH, "landmarker_model": PATH,
        "n_jobs": Int(-1), "out": Str("data/standin", what="a path"),
        "amplitude_scale": Float(1.0, gt=0.0),
    }),
    "index": Map({
        "max_bad_share": SHARE,
        "drop_k_marked_aus": Bool(True),
        "au_alternatives": Str("all", choices=("all", "first", "none")),
    }),
    "parallel": Map({
        "backend": Str("local", choices=("local", "dask")),
        "n_jobs": Int(-1),
        "scheduler": Str(None, nullable=True, what="a Dask scheduler address"),
    }),
    "faces": Map({
        "detector": Str("mediapipe", choices=("mediapipe", "dlib")),
        "landmarker_model": PATH,
        "sizes": List(Int(min=8)),
        "pseudo_apex_window": Int(6, min=1),
        "sequence_length": Int(8, min=1),
        "sequence_size": Int(112, min=8),
        "crop_side": Float(2.8, min=0.1),
        "centre_below": Float(0.5),
        "detect_max_side": Int(640, min=32),
        "max_failed_share": SHARE,
        "register_to_onset": Bool(False),  # head-motion registration (pipeline/features/headmotion.py)
        "chin_margin": Float(None, min=0.0, nullable=True),
    }),
    "flow": Map({
        "size": Int(112, min=8),
        "pairs": List(Str(choices=("onset_apex", "onset_pseudo", "offset_apex"))),
        "tvl1": Map({"tau": Float(min=0.0), "lambda_": Float(min=0.0), "theta": Float(min=0.0),
                     "nscales": Int(min=1), "warps": Int(min=1), "epsilon": Float(min=0.0),
                     "innnerIterations": Int(min=1), "outerIterations": Int(min=1),
                     "scaleStep": Float(min=0.0, max=1.0), "gamma": Float(min=0.0),
                     "medianFiltering": Int(min=1), "useInitialFlow": Bool()}),
        "max_failed_share": SHARE,
    }),
    "patches": Map({
        "size": Int(112, min=8),
        "patch_size": Int(24, min=2),
        "fallback_box": List(Float(min=0.0, max=1.0), length=4),
        # magnifier → α list: dlib landmarks on magnified.h5's apex frames (GAM-MM-MER)
        "magnified": Dict(List(Float(gt=0.0))),
        "max_failed_share": SHARE,
    }),
    "magnifier": Map({
        "device": DEVICE, "torch_threads": THREADS,
        # shipped: start from pipeline/magnification/weights/ | scratch: train (config: paper)
        "init": Str("shipped", choices=("shipped", "scratch")),
        "finetune_iterations": Int(0, min=0), "finetune_lr": Float(1e-5, gt=0.0),
        "synthetic": SYNTHETIC,
        "oh": Map({**_MAGNIFIER_TRAIN, "texture_branch": Bool(False), "weights": PATH,
                   # architecture (pipeline.magnification.train._OH_ARCH)
                   "channels": Int(32, min=2), "n_enc_resblk": Int(min=0),
                   "n_shape_resblk": Int(min=0), "n_texture_resblk": Int(min=0),
                   "n_man_resblk": Int(min=0), "n_dec_resblk": Int(min=0),
                   "g_kernel": Int(min=1),
                   "texture_loss_weight": Float(0.1, min=0.0),
                   "shape_loss_weight": Float(0.1, min=0.0)}),
        "stmemm": Map({**_MAGNIFIER_TRAIN, "dim": Int(32, min=1),
                       "encoder_depths": List(Int(min=1)), "decoder_depths": List(Int(min=1)),
                       "num_heads": Int(4, min=1), "window_size": Int(8, min=1),
                       "mlp_ratio": Float(2.0, min=0.1)}),
        "verify": Map({
            "n_per_alpha": Int(24, min=1), "alphas": List(Float(min=0.0)),
            "d_range": List(Float(min=0.0), length=2), "size": Int(112, min=8),
            "noise": Float(1.0, min=0.0), "target_alpha": Float(10, min=0.0),
            "target_ratio": List(Float(min=0.0), length=2),
            "eulerian_lambda_c": Float(16.0, min=0.0), "eulerian_levels": Int(5, min=1),
            "batch_size": Int(16, min=1)}),
    }),
    # stages/pretrain.py (pipeline/pretrain): offline pre-trained starts, docs/pretrain.md
    "pretrain": Map({
        "init": Str("shipped", choices=("shipped", "train")),
        "faces_dir": PATH, "standin_build": PATH,
        "min_photos": Int(24, min=1), "val_share": Float(0.15, min=0.0, max=0.9),
        "torch_threads": THREADS,
        "teacher": Map({"views": Int(4, min=1), "blends": Int(0, min=0),
                        "chip_padding": Float(0.25, min=0.0)}),
        "augment": Map({"scale": Float(0.1, min=0.0, max=0.5), "shift": Float(0.06, min=0.0, max=0.3),
                        "rotation_deg": Float(10.0, min=0.0, max=45.0), "flip": SHARE,
                        "brightness": Float(0.15, min=0.0, max=0.5),
                        "contrast": Float(0.3, min=0.0, max=0.9),
                        "saturation": Float(0.4, min=0.0, max=1.0), "grey": SHARE,
                        "gamma": Float(0.3, min=0.0, max=2.0),
                        "blur": Float(0.012, min=0.0, max=0.1)}),
        "students": Map({
            "resnet18": Map({"widths": List(Int(min=1), length=4, nullable=True),
                             **_PRETRAIN_STUDENT}),
            "mobilefacenet": Map({"width_mult": Float(0.25, gt=0.0),
                                  "embedding_dim": Int(64, min=1), **_PRETRAIN_STUDENT}),
        }),
    }),
    "magnify": Map({
        "device": DEVICE, "torch_threads": THREADS,
        "latent_alpha": Float(10, min=0.0),
        "latent_kind": Str("difference", choices=("difference", "manipulated")),
        "frames": Map({"oh": List(Float(min=0.0)), "stmemm": List(Float(min=0.0))}),
        # magnifier → databases whose samples get its decoded frames (null: all; GAM-MM-MER: LOSO)
        "frames_databases": Map({"oh": List(Str(choices=DATABASES), nullable=True),
                                 "stmemm": List(Str(choices=DATABASES), nullable=True)}),
        # all_offsets: also latent/onset_pseudo_all (every k = 0..max_offset; InfuseNet per-epoch draw)
        "pseudo_apex": Map({"seed": Int(0, min=0), "max_offset": Int(5, min=0),
                            "all_offsets": Bool(True)}),
        "batch_size": Int(16, min=1),
        "figure_samples": Int(4, min=0),
    }),
    # the training budget (ours, issue #31; pipeline/params.py apply_budget): learn = every
    # learned method trains learn_epochs[its protocol] epochs, a method named in learn_longer
    # that many (never fewer) | smoke = smoke_epochs
    "train": Map({**TRAIN_KEYS, "budget": Str("learn", choices=("learn", "smoke")),
                  "learn_epochs": Map({"cd6me": Int(10, min=1), "loso": Int(8, min=1)}),
                  "learn_longer": Dict(Int(min=1), nullable=True),
                  "smoke_epochs": Int(1, min=1)}),
    "gradcam": Map({
        "au": Str("AU4", what="an AU name"), "fold": Str("casme2", what="a CD6ME fold"),
        "n_samples": Int(4, min=1), "device": DEVICE, "torch_threads": THREADS,
        "networks": Dict(Map({"method": Str(what="a methods: section"),
                              "layer": Str(what="a dotted module name")})),
    }),
    "flow_mag": Map({  # pipeline/features/flow_mag.py (annotation-mimicking On-A / Off-A flows)
        "magnifier": Str("oh", choices=("oh", "stmemm")), "alpha": Float(6, gt=0.0),
        "size": Int(64, min=8), "max_failed_share": SHARE,
        "databases": List(Str(choices=DATABASES), nullable=True),
    }),
    "aucam": Map({  # stages/aucam.py (Ruan et al.'s AU-CAM figure)
        "method": Str("mimicking", what="a methods: section"),
        "fold": Str(None, nullable=True, what="a fold name <task>__<subject>"),
        "n_samples": Int(4, min=1), "torch_threads": THREADS,
    }),
    "report": Map({"methods": List(Str(what="a methods: section"), nullable=True)}),
    # How the train@<method> stages run, never what they compute: not a DVC parameter of any
    # stage (pipeline/training/execution.py; issue #35).
    "execution": Map(EXECUTION_KEYS),
    # methods: one section per method, checked by method_schema() against its family.
}


def method_schema(family: str) -> Key | None:
    """The schema of a ``methods.<name>`` section of ``family`` (None: family not declared)."""
    from pipeline.training.families import FAMILY_KEYS

    if family not in FAMILY_KEYS:
        return None
    return Map({**TRAIN_KEYS, **METHOD_KEYS, **FAMILY_KEYS[family]})


def declared_families() -> list[str]:
    from pipeline.training.families import FAMILY_KEYS

    return sorted(FAMILY_KEYS)


# --------------------------------------------------------------------------------------------
# Checking
# --------------------------------------------------------------------------------------------
@dataclass
class _Checker:
    errors: list[str] = field(default_factory=list)

    def add(self, where: str, message: str) -> None:
        self.errors.append(f"{where}: {message}")

    def unknown(self, where: str, key: str, known: Sequence[str]) -> None:
        close = difflib.get_close_matches(str(key), list(known), n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]!r}?" if close else f"; known: {', '.join(sorted(known))}"
        if key in EXECUTION_KEYS and (where == "train" or where.startswith("methods.")):
            hint = (f"; it moved to execution.{key} (how the training runs, not a DVC parameter "
                    "of the train stages)")
        self.add(f"{where}.{key}" if where else str(key), f"unknown key{hint}")


def _describe(key: Key) -> str:
    if key.what:
        return key.what
    if key.choices:
        text = " | ".join(str(c) for c in key.choices)
    else:
        text = {"int": "an integer", "float": "a number", "bool": "true or false",
                "str": "a string", "list": "a list", "map": "a mapping", "dict": "a mapping",
                "free": "a mapping"}.get(key.kind, key.kind)
        if key.kind == "oneof":
            text = " or ".join(_describe(o) for o in key.options)
        bounds = []
        if key.gt is not None:
            bounds.append(f"> {key.gt:g}")
        if key.min is not None:
            bounds.append(f">= {key.min:g}")
        if key.max is not None:
            bounds.append(f"<= {key.max:g}")
        if bounds:
            text += " " + " and ".join(bounds)
    return text + (" or null" if key.nullable else "")


def _accepts(key: Key, value: Any) -> bool:
    probe = _Checker()
    _check(key, value, "", probe)
    return not probe.errors


def _check(key: Key, value: Any, where: str, out: _Checker) -> None:
    if value is None:
        if not key.nullable and key.kind != "free":
            out.add(where, f"expected {_describe(key)}, got null")
        return
    kind = key.kind
    bad = False
    if kind == "free":
        return
    if kind == "int":
        bad = isinstance(value, bool) or not isinstance(value, int)
    elif kind == "float":
        bad = isinstance(value, bool) or not isinstance(value, int | float)
    elif kind == "bool":
        bad = not isinstance(value, bool)
    elif kind == "str":
        bad = not isinstance(value, str)
    elif kind == "list":
        bad = not isinstance(value, list | tuple)
    elif kind in ("map", "dict"):
        bad = not isinstance(value, Mapping)
    elif kind == "oneof":
        if not any(_accepts(o, value) for o in key.options):
            out.add(where, f"expected {_describe(key)}, got {value!r}")
        return
    if bad:
        out.add(where, f"expected {_describe(key)}, got {value!r}")
        return
    if key.choices and value not in key.choices:
        close = difflib.get_close_matches(str(value), [str(c) for c in key.choices], n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        out.add(where, f"expected {_describe(key)}, got {value!r}{hint}")
        return
    if kind in ("int", "float"):
        if ((key.min is not None and value < key.min) or (key.max is not None and value > key.max)
                or (key.gt is not None and value <= key.gt)):
            out.add(where, f"expected {_describe(key)}, got {value!r}")
        return
    if kind == "list":
        if key.length is not None and len(value) != key.length:
            out.add(where, f"expected {key.length} items, got {len(value)}")
            return
        for i, v in enumerate(value):
            _check(key.item, v, f"{where}[{i}]", out)
        return
    if kind == "dict":
        for k, v in value.items():
            _check(key.value, v, f"{where}.{k}", out)
        return
    if kind == "map":
        for k, v in value.items():
            if k not in key.keys:
                out.unknown(where, k, list(key.keys))
            else:
                _check(key.keys[k], v, f"{where}.{k}" if where else str(k), out)


def _check_methods(methods: Any, out: _Checker) -> None:
    if methods is None:
        return
    if not isinstance(methods, Mapping):
        out.add("methods", f"expected a mapping of method sections, got {methods!r}")
        return
    for name, block in methods.items():
        where = f"methods.{name}"
        if not isinstance(block, Mapping):
            out.add(where, f"expected a mapping, got {block!r}")
            continue
        family = block.get("family", name)
        schema = method_schema(str(family))
        if schema is None:
            known = declared_families()
            close = difflib.get_close_matches(str(family), known, n=1)
            hint = (f"did you mean {close[0]!r}?" if close else f"known: {', '.join(known)}")
            out.add(f"{where}.family", f"unknown method family {family!r}; {hint} (a new family "
                    "declares its keys in pipeline/training/families.py)")
            continue
        _check(schema, block, where, out)


def check(resolved: Mapping[str, Any]) -> list[str]:
    """Errors of a parameter mapping already resolved for one configuration (no ``paper:``).

    Returns
    -------
    list of str
        One line per error, ``<dotted.key>: <what is wrong>``; empty when valid.
    """
    out = _Checker()
    for name, value in resolved.items():
        if name == "methods":
            _check_methods(value, out)
        elif name not in SECTIONS:
            out.unknown("", name, [*SECTIONS, "methods"])
        else:
            _check(SECTIONS[name], value, name, out)
    return out.errors
