"""ImageNet backbones (torchvision ResNet, timm ViT) with input-channel and weight handling.

One builder, :func:`build_backbone`, shared by every method that fine-tunes an ImageNet network
(InfuseNet's FrameFlow/FrameMag, the ResNet18/34/50 and ViT-Tiny baselines of InfuseNet's
Table 1, ...).  It returns the plain torchvision / timm module, so callers keep the library's
module names (``layer1`` ... ``layer4``, ``blocks.11``) for hooks and Grad-CAM.

Pretrained weights (``pretrained``):

* ``False`` -- random initialisation (the quick configuration; nothing is downloaded).
* ``True`` -- the library's own ImageNet weights: torchvision ``ResNet18_Weights.IMAGENET1K_V1``
  (``ResNet34_…``, ``ResNet50_…`` likewise); timm's default tag of ``vit_tiny_patch16_224``
  (``augreg_in21k_ft_in1k``).  This downloads through torchvision / timm (network needed).
* a path -- a local file holding a state_dict in the library's key format (``torch.save`` file
  ``.pt``/``.pth``/``.bin``, or ``.safetensors``), e.g. the file torchvision or the Hugging Face
  hub would have downloaded.  A ``{"state_dict": …}`` / ``{"model": …}`` wrapper and a
  ``module.`` (DataParallel) prefix are unwrapped.

Whatever their origin, the ImageNet tensors are fitted to the requested architecture the same way:

* first convolution (ResNet ``conv1``, ViT ``patch_embed.proj``) with ``in_channels != 3``: the
  mean of the RGB filters over the input-channel axis, replicated ``in_channels`` times and scaled
  by ``3 / in_channels``.  An input that is the same in every channel then produces the same
  response as the RGB filters give to a grey image of that value.  A file whose first convolution
  already has ``in_channels`` input channels is loaded as it is;
* ViT patch size different from the file's (e.g. 8 for the half-resolution magnified latent):
  the kernel is resampled with timm's ``resample_patch_embed`` (pseudo-inverse resize, Beyer et
  al., FlexiViT); position embeddings of a different token grid are resampled bicubically with
  timm's ``resample_abs_pos_embed`` (the class token is kept);
* classifier (ResNet ``fc``, ViT ``head``): loaded when its shape matches the requested
  ``num_classes``, otherwise left at its random initialisation (logged) -- the usual fine-tuning
  set-up;
* any other missing key, unexpected key or shape mismatch raises :class:`PretrainedWeightsError`
  naming the file and listing the offending keys.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision
from torch import nn

log = logging.getLogger(__name__)

__all__ = [
    "BACKBONES",
    "RESNET_WIDTHS",
    "BackboneSpec",
    "PretrainedWeightsError",
    "adapt_first_conv_weight",
    "backbone_family",
    "build_backbone",
    "feature_dim",
    "load_pretrained_state_dict",
]


class PretrainedWeightsError(ValueError):
    """A pretrained-weights file does not fit the requested backbone."""


@dataclass(frozen=True)
class BackboneSpec:
    """What :func:`build_backbone` needs to know about one backbone.

    Attributes
    ----------
    family : {"resnet", "vit"}
    library_name : str
        torchvision builder name (``resnet18``) or timm model name (``vit_tiny_patch16_224``).
    feature_dim : int
        Width of the pooled feature vector (ResNet18/34: 512, ResNet50: 2048, ViT-Tiny: 192).
    first_conv : str
        State-dict prefix of the first convolution.
    classifier : str
        State-dict prefix of the ImageNet classifier.
    weights : str or None
        torchvision weights enum used for ``pretrained=True`` (None: timm's default tag).
    """

    family: str
    library_name: str
    feature_dim: int
    first_conv: str
    classifier: str
    weights: str | None = None


BACKBONES: dict[str, BackboneSpec] = {
    "resnet18": BackboneSpec(
        "resnet", "resnet18", 512, "conv1", "fc", "ResNet18_Weights.IMAGENET1K_V1"
    ),
    "resnet34": BackboneSpec(
        "resnet", "resnet34", 512, "conv1", "fc", "ResNet34_Weights.IMAGENET1K_V1"
    ),
    "resnet50": BackboneSpec(
        "resnet", "resnet50", 2048, "conv1", "fc", "ResNet50_Weights.IMAGENET1K_V1"
    ),
    "vit_tiny": BackboneSpec("vit", "vit_tiny_patch16_224", 192, "patch_embed.proj", "head"),
}
_ALIASES = {"vit_tiny_patch16_224": "vit_tiny"}


def _spec(name: str) -> BackboneSpec:
    key = _ALIASES.get(name, name)
    if key not in BACKBONES:
        raise ValueError(
            f"unknown backbone {name!r}; expected one of {sorted(BACKBONES) + sorted(_ALIASES)}"
        )
    return BACKBONES[key]


def backbone_family(name: str) -> str:
    """``"resnet"`` or ``"vit"`` for backbone ``name``.

    Raises
    ------
    ValueError
        Unknown ``name``.
    """
    return _spec(name).family


#: torchvision's ResNet stage widths (output channels of ``layer1`` ... ``layer4``, before the
#: bottleneck expansion).
RESNET_WIDTHS = (64, 128, 256, 512)


def _check_widths(name: str, spec: BackboneSpec,
                  widths: Sequence[int] | None) -> tuple[int, ...] | None:
    if widths is None:
        return None
    widths = tuple(int(w) for w in widths)
    if spec.family != "resnet":
        raise ValueError(f"{name}: stage widths apply to the ResNets only, got {widths}")
    if len(widths) != 4 or min(widths) < 1:
        raise ValueError(f"{name}: widths must be four positive integers (layer1 ... layer4), "
                         f"got {widths}")
    return None if widths == RESNET_WIDTHS else widths


def _set_resnet_widths(model: nn.Module, widths: tuple[int, ...]) -> None:
    """Rebuild ``layer1`` ... ``layer4`` of a torchvision ResNet with other widths, in place.

    Same blocks, depths and strides (torchvision's own ``_make_layer``), stem unchanged (64
    channels), then torchvision's initialisation (He normal for convolutions, BN at 1 / 0).
    """
    block = type(model.layer1[0])
    model.inplanes = model.conv1.out_channels
    for i, width in enumerate(widths):
        n_blocks = len(getattr(model, f"layer{i + 1}"))
        setattr(model, f"layer{i + 1}",
                model._make_layer(block, width, n_blocks, stride=1 if i == 0 else 2))
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.constant_(m.weight, 1)
            nn.init.constant_(m.bias, 0)


def feature_dim(name: str, widths: Sequence[int] | None = None) -> int:
    """Width of the pooled feature vector of backbone ``name`` (e.g. 512 for ``resnet18``).

    ``widths``: the ResNet stage widths given to :func:`build_backbone` (the last one, times 4
    for the bottleneck ``resnet50``); None: the library's.

    Raises
    ------
    ValueError
        Unknown ``name``; ``widths`` for a ViT or not four positive integers.
    """
    spec = _spec(name)
    widths = _check_widths(name, spec, widths)
    if widths is None:
        return spec.feature_dim
    return widths[-1] * (spec.feature_dim // 512)


def adapt_first_conv_weight(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """Fit ImageNet first-convolution filters to ``in_channels`` input channels.

    Parameters
    ----------
    weight : Tensor of shape (C_out, 3, k, k)
        RGB filters.
    in_channels : int
        Input channels of the new convolution (>= 1).

    Returns
    -------
    Tensor of shape (C_out, in_channels, k, k)
        ``mean_c(weight) * 3 / in_channels`` replicated over the input axis (``weight`` itself
        when ``in_channels == 3``), same dtype.

    Raises
    ------
    ValueError
        If ``weight`` is not 4-D or ``in_channels < 1``.
    """
    if weight.ndim != 4:
        raise ValueError(f"expected a 4-D convolution weight, got shape {tuple(weight.shape)}")
    if in_channels < 1:
        raise ValueError(f"in_channels must be >= 1, got {in_channels}")
    if weight.shape[1] == in_channels:
        return weight
    mean = weight.float().mean(dim=1, keepdim=True) * (weight.shape[1] / in_channels)
    return mean.repeat(1, in_channels, 1, 1).to(weight.dtype)


def _read_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: pretrained-weights file not found (pretrained expects False, True or the "
            "path of a local state_dict file)"
        )
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: object = load_file(str(path), device="cpu")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unreadable / not a tensor file
        raise PretrainedWeightsError(
            f"{path}: cannot read a state_dict ({type(exc).__name__}: {exc})"
        ) from exc
    for wrapper in ("state_dict", "model"):
        if isinstance(obj, Mapping) and isinstance(obj.get(wrapper), Mapping):
            obj = obj[wrapper]
    if not isinstance(obj, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    ):
        raise PretrainedWeightsError(
            f"{path}: expected a state_dict (mapping of parameter names to tensors)"
        )
    state = dict(obj)
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def _library_state_dict(spec: BackboneSpec) -> dict[str, torch.Tensor]:
    """ImageNet weights through torchvision's / timm's own download mechanism (network)."""
    if spec.family == "resnet":
        weights = torchvision.models.get_weight(spec.weights)
        log.info("downloading/reading %s through torchvision", spec.weights)
        return dict(weights.get_state_dict(progress=False))
    import timm  # imported where needed: ~1.5 s that the ResNet methods do not pay

    log.info("downloading/reading %s through timm", spec.library_name)
    return dict(timm.create_model(spec.library_name, pretrained=True).state_dict())


def _format_keys(keys: list[str], limit: int = 20) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", … ({len(keys) - limit} more)" if len(keys) > limit else "")


def load_pretrained_state_dict(
    model: nn.Module,
    state: Mapping[str, torch.Tensor],
    spec_name: str,
    source: str = "<state_dict>",
) -> None:
    """Fit an ImageNet state_dict to ``model`` (see the module docstring) and load it strictly.

    Parameters
    ----------
    model : nn.Module
        A backbone built by :func:`build_backbone` (any ``in_channels``, classes, ViT grid).
    state : mapping of str to Tensor
        State dict in the library's key format.
    spec_name : str
        Backbone name (``resnet18``, ``vit_tiny``, ...), selects the first-conv / head keys.
    source : str
        Where ``state`` came from, used in messages (a file path or ``torchvision:<enum>``).

    Raises
    ------
    PretrainedWeightsError
        On missing keys, unexpected keys or shape mismatches other than those adapted; the
        message names ``source`` and lists the offending keys with both shapes.
    """
    spec = _spec(spec_name)
    target = model.state_dict()
    state = dict(state)

    # First convolution: input channels (and, for ViT, patch size).
    conv_key = f"{spec.first_conv}.weight"
    if conv_key in state and conv_key in target and state[conv_key].ndim == 4:
        w = state[conv_key]
        want = target[conv_key].shape
        if spec.family == "vit" and tuple(w.shape[-2:]) != tuple(want[-2:]):
            from timm.layers import resample_patch_embed

            w = resample_patch_embed(w, list(want[-2:]))
        if w.shape[1] != want[1] and w.shape[1] == 3:
            w = adapt_first_conv_weight(w, want[1])
        state[conv_key] = w

    # ViT position embeddings of another token grid.
    if spec.family == "vit" and "pos_embed" in state and "pos_embed" in target:
        pe, want = state["pos_embed"], target["pos_embed"].shape
        if pe.shape != want and pe.ndim == 3 and pe.shape[-1] == want[-1]:
            n_prefix = int(getattr(model, "num_prefix_tokens", 1))
            grid = model.patch_embed.grid_size
            from timm.layers import resample_abs_pos_embed

            state["pos_embed"] = resample_abs_pos_embed(
                pe, new_size=list(grid), num_prefix_tokens=n_prefix
            )

    # Classifier: kept only when it fits.
    head_keys = [k for k in state if k.startswith(spec.classifier + ".")]
    if any(k not in target or target[k].shape != state[k].shape for k in head_keys):
        log.info(
            "%s: classifier %s not loaded (shape differs from the model's)", source, spec.classifier
        )
        for k in head_keys:
            del state[k]
    for k in target:  # a classifier the file lacks (or that was dropped) keeps its random init
        if k.startswith(spec.classifier + ".") and k not in state:
            state[k] = target[k]

    # BatchNorm counters absent from old checkpoints are harmless.
    for k in target:
        if k.endswith("num_batches_tracked") and k not in state:
            state[k] = target[k]

    missing = sorted(k for k in target if k not in state)
    unexpected = sorted(k for k in state if k not in target)
    mismatched = sorted(
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(target[k].shape)}"
        for k in state
        if k in target and state[k].shape != target[k].shape
    )
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"missing keys ({len(missing)}): {_format_keys(missing)}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {_format_keys(unexpected)}")
        if mismatched:
            parts.append(f"shape mismatches ({len(mismatched)}): {_format_keys(mismatched)}")
        raise PretrainedWeightsError(
            f"{source}: weights do not fit backbone {spec_name!r}; " + "; ".join(parts)
        )
    model.load_state_dict(state, strict=True)


def build_backbone(
    name: str,
    in_channels: int = 3,
    pretrained: bool | str | os.PathLike | None = False,
    *,
    num_classes: int = 0,
    image_size: int = 224,
    patch_size: int | None = None,
    widths: Sequence[int] | None = None,
) -> nn.Module:
    """Build a torchvision ResNet or timm ViT, optionally with ImageNet weights.

    Parameters
    ----------
    name : str
        ``resnet18``, ``resnet34``, ``resnet50`` (torchvision) or ``vit_tiny``
        (= timm ``vit_tiny_patch16_224``).
    in_channels : int
        Input channels of the first convolution (3 for RGB or an optical-flow image (u, v, ε);
        64 for the magnified latent entering a ViT patch embedding).
    pretrained : bool, str, path-like or None
        ``False``/``None``: random init; ``True``: the library's ImageNet weights (downloads);
        a path: a local state_dict file.  See the module docstring for how the tensors are
        fitted.
    num_classes : int
        Classifier outputs; 0 replaces the classifier by ``nn.Identity`` so that the module
        returns the pooled features, shape (B, :func:`feature_dim`).
    image_size : int
        Input side S in pixels (ViT only: fixes the token grid; ResNets accept any size).
    patch_size : int, optional
        ViT patch side in pixels (default 16, the ImageNet model's).
    widths : sequence of 4 int, optional
        ResNet only: output channels of ``layer1`` ... ``layer4`` (before the bottleneck
        expansion); None or :data:`RESNET_WIDTHS` is the library's network.  Ours, for quick runs
        on a CPU: e.g. ``(64, 96, 128, 192)`` keeps the 64-channel stem (InfuseNet's latent
        replaces its output) at about a third of the training time of ResNet18 at 32-64 px.
        ImageNet weights do not fit other widths; a file of the same widths does (the
        ``pretrain`` stage's, :mod:`pipeline.pretrain`).

    Returns
    -------
    nn.Module
        ``torchvision.models.ResNet`` or ``timm.models.VisionTransformer``, in training mode.

    Raises
    ------
    ValueError
        Unknown ``name``; ``image_size`` not a multiple of ``patch_size`` (ViT); bad counts;
        ``widths`` not four positive integers, given for a ViT, or with ``pretrained=True``.
    FileNotFoundError
        ``pretrained`` is a path that does not exist.
    PretrainedWeightsError
        The weights file does not fit (keys and shapes listed).
    """
    spec = _spec(name)
    if in_channels < 1 or num_classes < 0:
        raise ValueError(
            f"in_channels must be >= 1 and num_classes >= 0, got {in_channels}, {num_classes}"
        )
    widths = _check_widths(name, spec, widths)
    if widths is not None and pretrained is True:
        raise ValueError(f"{name}: ImageNet weights need the library's widths "
                         f"{RESNET_WIDTHS}, got widths {widths} with pretrained=True")
    if spec.family == "resnet":
        model: nn.Module = getattr(torchvision.models, spec.library_name)(weights=None)
        if widths is not None:
            _set_resnet_widths(model, widths)
        if in_channels != 3:
            old = model.conv1
            model.conv1 = nn.Conv2d(
                in_channels, old.out_channels, old.kernel_size, old.stride, old.padding, bias=False
            )
        model.fc = nn.Linear(feature_dim(name, widths), num_classes) if num_classes else nn.Identity()
    else:
        patch = 16 if patch_size is None else int(patch_size)
        if image_size % patch:
            raise ValueError(
                f"{name}: image_size {image_size} px is not a multiple of patch_size {patch} px"
            )
        import timm

        model = timm.create_model(
            spec.library_name,
            pretrained=False,
            img_size=image_size,
            patch_size=patch,
            in_chans=in_channels,
            num_classes=num_classes,
        )

    if pretrained is None or pretrained is False:
        return model
    if pretrained is True:
        state = _library_state_dict(spec)
        library = "torchvision" if spec.family == "resnet" else "timm"
        source = f"{library}:{spec.weights or spec.library_name}"
    elif isinstance(pretrained, str | os.PathLike):
        path = Path(pretrained)
        state = _read_state_dict_file(path)
        source = str(path)
    else:
        raise ValueError(
            f"pretrained must be False, True or a path to a state_dict file, got {pretrained!r}"
        )
    load_pretrained_state_dict(model, state, name, source=source)
    log.info("%s: loaded pretrained weights from %s (in_channels=%d)", name, source, in_channels)
    return model
