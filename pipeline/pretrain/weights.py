"""Where a method's initial weights come from: ``pretrained: false | stage | true | <path>``.

The ``pretrain`` stage writes one plain ``state_dict`` file per backbone into ``models/pretrain/``
(:data:`PRETRAIN_DIR`): ``resnet18.pt`` (the quick ResNet18 of
:func:`pipeline.models.backbones.build_backbone`, classifier removed) and ``mobilefacenet.pt``
(AC4AU's :class:`pipeline.models.mobilefacenet.MobileFaceNet`), float32, plus ``pretrain.json``
(what made them, their SHA-256).  A method's ``pretrained`` value is resolved by
:func:`resolve_pretrained` into what the network builders take and a *source* string that the
train stage records in ``metrics/<method>.json`` (``init_weights``):

========================  ====================================================  =========================
value                     weights                                               ``init_weights``
========================  ====================================================  =========================
``false`` / null          random initialisation                                 ``none``
``stage``                 ``models/pretrain/<backbone>.pt`` of this stage       ``stage sha256:<hex>``
``true``                  torchvision's ImageNet weights (a download; ResNets)  ``imagenet``
a path                    the user's own state_dict file                        ``path <path> sha256:<hex>``
========================  ====================================================  =========================

The shipped weights (``pipeline/pretrain/weights/*.pt``, float16, described by ``MODEL_CARD.md``)
are checked against ``MANIFEST.json`` (SHA-256 and the student configuration) by
:func:`verify_shipped` before the stage copies them (``pretrain.init: shipped``).
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from pipeline.assets import sha256_of

log = logging.getLogger("pretrain")

__all__ = ["PRETRAIN_DIR", "SHIPPED_DIR", "STAGE_BACKBONES", "PretrainError", "fit_gdconv",
           "load_mobilefacenet_stage", "read_state", "require_made", "resolve_for_method",
           "without_pretrained",
           "resolve_pretrained", "stage_weights_path",
           "verify_shipped"]

#: The stage's output folder (relative to the project root, where the stages run).
PRETRAIN_DIR = Path("models/pretrain")
#: The weights shipped with the package and their manifest.
SHIPPED_DIR = Path(__file__).resolve().parent / "weights"
#: Backbones the stage provides weights for (``pretrain.students``).
STAGE_BACKBONES = ("resnet18", "mobilefacenet")


class PretrainError(ValueError):
    """A ``pretrained`` value that cannot be honoured, or shipped weights that fail their check
    (one line naming the key or the file)."""


def stage_weights_path(backbone: str, root: str | os.PathLike | None = None,
                       require: bool = True) -> Path:
    """``<root>/<backbone>.pt`` (root: :data:`PRETRAIN_DIR`), which must exist if ``require``.

    Raises
    ------
    PretrainError
        ``backbone`` not in :data:`STAGE_BACKBONES`, or (``require``) the file is missing.
    """
    if backbone not in STAGE_BACKBONES:
        raise PretrainError(f"the pretrain stage has no weights for {backbone!r} (it provides "
                            f"{', '.join(STAGE_BACKBONES)})")
    path = Path(PRETRAIN_DIR if root is None else root) / f"{backbone}.pt"
    if require and not path.is_file():
        raise PretrainError(f"{path}: not found; run the pretrain stage first "
                            "(dvc repro pretrain, or python -m stages.pretrain)")
    return path


def resolve_pretrained(value: Any, backbone: str, where: str, *, imagenet: bool = True,
                       root: str | os.PathLike | None = None) -> tuple[bool | str, str]:
    """See :func:`_resolve`; ``stage`` before the stage ran is an error here."""
    return _resolve(value, backbone, where, imagenet=imagenet, root=root, require=True)


def resolve_for_method(value: Any, backbone: str, where: str, *, imagenet: bool = True
                       ) -> tuple[bool | str, str]:
    """:func:`resolve_pretrained` as the method families call it when a spec is built: a
    ``stage`` file that does not exist yet is not an error here (a spec is also built to list a
    method's inputs or to check ``params.yaml``, before the ``pretrain`` stage has run); the
    network builder then fails on it with one line naming the file, and no run completes
    without the weights.  The source is ``stage sha256:<hex>`` when the file exists."""
    return _resolve(value, backbone, where, imagenet=imagenet, root=None, require=False)


NOT_MADE = "stage (weights not yet made)"


def without_pretrained(params: Mapping[str, Any]) -> dict[str, Any]:
    """A method section whose network starts random (``pretrained: false``, and
    ``model.pretrained: null`` where the section has a ``model`` block with that key).

    For rebuilding a network whose trained weights are loaded next (fold checkpoints, the final
    model of ``mer-predict``): its initial weights do not matter, and ``models/pretrain/`` need
    not exist where it is rebuilt.
    """
    out = dict(params)
    if "pretrained" in out:
        out["pretrained"] = False
    model = out.get("model")
    if isinstance(model, Mapping) and "pretrained" in model:
        out["model"] = {**model, "pretrained": None}
    return out


def require_made(source: str, backbone: str, where: str) -> None:
    """Before a network is built: the stage's weights of a ``stage`` source must exist now.

    Raises
    ------
    PretrainError
        ``source`` is :data:`NOT_MADE` and ``models/pretrain/<backbone>.pt`` still does not exist
        (one line: run the ``pretrain`` stage first).
    """
    if source == NOT_MADE:
        try:
            stage_weights_path(backbone)
        except PretrainError as exc:
            raise PretrainError(f"{where}: stage: {exc}") from None


def _resolve(value: Any, backbone: str, where: str, *, imagenet: bool,
             root: str | os.PathLike | None, require: bool) -> tuple[bool | str, str]:
    """A method's ``pretrained`` value → (what the network builder takes, the source string).

    Parameters
    ----------
    value : bool, str or None
        ``False``/``None``/``"none"``/``""``: random init; ``"stage"``: this project's
        ``pretrain`` stage; ``True``: ImageNet through torchvision (a download); another string: a
        state_dict file.
    backbone : str
        ``resnet18`` (ResNet families), ``resnet34``, ``vit_tiny``, ``mobilefacenet`` (AC4AU).
    where : str
        The parameter's name for messages (``methods.resnet18_flow.pretrained``).
    imagenet : bool
        Whether ``True`` is allowed (False for AC4AU: there is no official face-recognition
        download).
    root : path, optional
        Folder of the stage's weights (default :data:`PRETRAIN_DIR`).

    Returns
    -------
    (bool or str, str)
        ``False`` | ``True`` | the file's path, and ``"none"`` | ``"imagenet"`` |
        ``"stage sha256:<hex>"`` | ``"path <path> sha256:<hex>"``.

    Raises
    ------
    PretrainError
        ``stage`` for a backbone the stage does not provide or before the stage ran; ``True``
        where not allowed; a path that is not a file; any other type.
    """
    if value is None or value is False or (isinstance(value, str)
                                           and value.strip().lower() in ("", "none", "false")):
        return False, "none"
    if value is True:
        if not imagenet:
            raise PretrainError(f"{where}: true (a download) has no meaning for {backbone}; give "
                                "stage or the path of a state_dict file")
        return True, "imagenet"
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str):
        raise PretrainError(f"{where}: expected false, stage, true or a path, got {value!r}")
    if value.strip().lower() == "stage":
        try:
            path = stage_weights_path(backbone, root, require)
        except PretrainError as exc:
            raise PretrainError(f"{where}: stage: {exc}") from None
        if not path.is_file():
            return str(path), NOT_MADE
        return str(path), f"stage sha256:{sha256_of(path)}"
    path = Path(value)
    if not path.is_file():
        raise PretrainError(f"{where}: {path}: weights file not found (false: random init; "
                            "stage: the pretrain stage's weights; true: ImageNet, a download)")
    return str(path), f"path {path} sha256:{sha256_of(path)}"


def read_state(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A plain ``state_dict`` file (tensors only) as float32 tensors (integers kept).

    Raises
    ------
    PretrainError
        The file is missing, unreadable or not a mapping of names to tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise PretrainError(f"{path}: weights file not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any unpickling failure, named
        raise PretrainError(f"{path}: not a readable state_dict ({type(exc).__name__}: "
                            f"{exc})") from exc
    if not isinstance(obj, Mapping) or not obj or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        raise PretrainError(f"{path}: expected a mapping of parameter names to tensors")
    return {k: v.float() if v.is_floating_point() else v for k, v in obj.items()}


def fit_gdconv(weight: torch.Tensor, side: int) -> torch.Tensor:
    """MobileFaceNet's global depthwise kernel resampled to another feature-map side.

    The GDConv kernel is as large as the last feature map (input_size / 16), so weights distilled
    at one input size do not fit another.  Ours: bilinear resampling of each k × k kernel to
    side × side, then the difference between the old and the new kernel's sum spread evenly
    over the new kernel, so that a constant map gives the same response.

    Parameters
    ----------
    weight : Tensor of shape (C, 1, k, k)
    side : int
        New kernel side (>= 1).

    Returns
    -------
    Tensor of shape (C, 1, side, side), same dtype.

    Raises
    ------
    ValueError
        ``weight`` not 4-D with one input channel per group, or ``side < 1``.
    """
    if weight.ndim != 4 or weight.shape[1] != 1 or side < 1:
        raise ValueError(f"expected a (C, 1, k, k) depthwise kernel and side >= 1, got "
                         f"{tuple(weight.shape)} and {side}")
    k = weight.shape[-1]
    if k == side:
        return weight
    w = weight.float()
    out = F.interpolate(w, size=(side, side), mode="bilinear", align_corners=True)
    out = out + (w.sum(dim=(2, 3), keepdim=True) - out.sum(dim=(2, 3), keepdim=True)) / side ** 2
    return out.to(weight.dtype)


def load_mobilefacenet_stage(model: torch.nn.Module, path: str | os.PathLike) -> None:
    """Load the stage's ``mobilefacenet.pt`` into a MobileFaceNet (or a model holding one).

    All tensors must fit (``strict``), except the GDConv kernel, which is resampled to the
    model's feature-map side (:func:`fit_gdconv`) when the model's ``input_size`` differs from
    the one the weights were distilled at.

    Raises
    ------
    PretrainError
        Unreadable file, or keys/shapes that do not fit (another ``width_mult`` or
        ``embedding_dim``; one line listing them).
    TypeError
        ``model`` holds no MobileFaceNet.
    """
    from pipeline.models.mobilefacenet import _find_backbone

    backbone = _find_backbone(model)
    state = read_state(path)
    key = "gdconv.conv.weight"
    if key in state:
        state[key] = fit_gdconv(state[key], backbone.feature_size)
    own = backbone.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    bad = [f"{k} file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
           for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or bad:
        raise PretrainError(
            f"{path}: does not fit this MobileFaceNet (another pretrain.students.mobilefacenet "
            f"width_mult or embedding_dim?): missing {missing[:5]}, unexpected {unexpected[:5]}, "
            f"shapes {bad[:3]}")
    backbone.load_state_dict(state, strict=True)
    log.info("%s: loaded %d MobileFaceNet tensors (GDConv %d x %d)", path, len(state),
             backbone.feature_size, backbone.feature_size)


def verify_shipped(name: str, config: Mapping[str, Any],
                   shipped_dir: str | os.PathLike | None = None) -> Path:
    """The shipped weights of student ``name``, checked against ``MANIFEST.json``.

    Parameters
    ----------
    name : str
        ``resnet18`` or ``mobilefacenet``.
    config : mapping
        The configured student (``pretrain.students.<name>``); its architecture keys must equal
        the manifest's (the weights of another width do not fit).
    shipped_dir : path, optional
        Default :data:`SHIPPED_DIR`.

    Returns
    -------
    Path
        The verified ``<name>.pt``.

    Raises
    ------
    PretrainError
        Missing manifest or file, a SHA-256 that differs from the manifest's, or a configured
        architecture the shipped weights were not distilled for (then use ``pretrain.init:
        train``).
    """
    folder = Path(SHIPPED_DIR if shipped_dir is None else shipped_dir)
    manifest_path = folder / "MANIFEST.json"
    if not manifest_path.is_file():
        raise PretrainError(f"{manifest_path}: no shipped-weights manifest; set pretrain.init: "
                            "train")
    manifest = json.loads(manifest_path.read_text())
    entry = (manifest.get("files") or {}).get(name)
    if entry is None:
        raise PretrainError(f"{manifest_path}: no shipped weights for {name!r}; set "
                            "pretrain.init: train")
    path = folder / entry["file"]
    if not path.is_file():
        raise PretrainError(f"{path}: shipped weights missing (a Git LFS pointer or a partial "
                            "checkout?); set pretrain.init: train")
    digest = sha256_of(path)
    if digest != entry["sha256"]:
        raise PretrainError(f"{path}: SHA-256 {digest} differs from the manifest's "
                            f"{entry['sha256']} (corrupted or replaced file)")
    arch = {k: config[k] for k in entry["arch"] if k in config}
    want = {k: entry["arch"][k] for k in arch}
    if _plain(arch) != _plain(want):
        raise PretrainError(f"pretrain.students.{name}: {arch} differs from the shipped "
                            f"weights' {want}; set pretrain.init: train to distil these")
    return path


def _plain(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    if isinstance(obj, float) and math.isfinite(obj) and obj == int(obj):
        return int(obj)
    return obj
