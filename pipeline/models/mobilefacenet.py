"""MobileFaceNet, the face-recognition frame backbone of AC4AU, and loading its weights.

Chen, Liu, Gao & Han, "MobileFaceNets: Efficient CNNs for Accurate Real-Time Face Verification on
Mobile Devices", CCBR 2018, Table 1 (input 112x112x3):

==========  ==========================  ===  ====  ===  ===
input       operator                    t    c     n    s
==========  ==========================  ===  ====  ===  ===
112²x3      conv 3x3                    -    64    1    2
56²x64      depthwise conv 3x3          -    64    1    1
56²x64      bottleneck                  2    64    5    2
28²x64      bottleneck                  4    128   1    2
14²x128     bottleneck                  2    128   6    1
14²x128     bottleneck                  4    128   1    2
7²x128      bottleneck                  2    128   2    1
7²x128      conv 1x1                    -    512   1    1
7²x512      linear GDConv 7x7           -    512   1    1
1²x512      linear conv 1x1             -    128   1    1
==========  ==========================  ===  ====  ===  ===

Every convolution is followed by batch normalisation; the non-linearity is PReLU (one slope per
channel); "linear" layers have none.  A bottleneck is MobileNetV2's inverted residual (1x1
expansion by t, 3x3 depthwise with stride s, linear 1x1 projection), with an identity shortcut when
the stride is 1 and the channel counts match.

What differs from the paper: a ``width_mult`` scales every channel count (rounded to a multiple of
8) so the quick configuration can run a narrower network of the same architecture; the embedding
size is a constructor argument (paper: 128); ``input_size`` may be any multiple of 16 (the GDConv
kernel is the final feature-map side, 7 for 112 px).

The network is split in two so AC4AU can put its spatial transformer between them (AC4AU paper,
Sec. 3.2): :meth:`MobileFaceNet.forward_features` (conv1 … last bottleneck, a ``C x H/16 x W/16``
map) and :meth:`MobileFaceNet.forward_head` (the three output convolutions, BN after each, PReLU
after the first only), which AC4AU uses as its residual refinement.

Weight file layout
------------------
:func:`load_backbone_weights` reads a ``state_dict`` saved with ``torch.save`` (``.pt``/``.pth``;
a dict holding it under ``"state_dict"`` or ``"model"`` is unwrapped).  The keys are this module's
own names (``i`` = 0…14 over the 15 bottlenecks, stage by stage):

- ``conv1.{conv.weight, bn.*, prelu.weight}``        3x3 stride-2 stem
- ``conv2_dw.{conv.weight, bn.*, prelu.weight}``     3x3 depthwise
- ``blocks.{i}.expand.{conv.weight, bn.*, prelu.weight}``  1x1 expansion
- ``blocks.{i}.dw.{conv.weight, bn.*, prelu.weight}``      3x3 depthwise
- ``blocks.{i}.project.{conv.weight, bn.*}``               linear 1x1 projection
- ``conv_sep.{conv.weight, bn.*, prelu.weight}``     1x1 to 512 channels
- ``gdconv.{conv.weight, bn.*}``                     linear global depthwise conv
- ``embedding.{conv.weight, bn.*}``                  linear 1x1 to the embedding

(``bn.*`` = ``bn.weight, bn.bias, bn.running_mean, bn.running_var, bn.num_batches_tracked``.)
Leading prefixes such as ``module.`` (DataParallel) or ``backbone.`` are stripped; a checkpoint
with other names can be mapped with the ``rename`` argument.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)

#: Bottleneck stages of Chen et al. (2018), Table 1: (expansion t, channels c, repeats n, stride s).
MOBILEFACENET_STAGES: tuple[tuple[int, int, int, int], ...] = (
    (2, 64, 5, 2),
    (4, 128, 1, 2),
    (2, 128, 6, 1),
    (4, 128, 1, 2),
    (2, 128, 2, 1),
)

#: Prefixes stripped from checkpoint keys by default (in this order, repeatedly).
DEFAULT_STRIP_PREFIXES: tuple[str, ...] = ("module.", "backbone.", "model.")


def scaled_channels(channels: int, width_mult: float, divisor: int = 8) -> int:
    """Channel count ``channels * width_mult`` rounded to a multiple of ``divisor`` (at least one).

    The rounding of MobileNetV2 (Sandler et al., 2018): to the nearest multiple, never more than
    10 % below the exact value.

    Parameters
    ----------
    channels : int
        Channel count of the paper's network.
    width_mult : float
        Width multiplier, > 0 (1.0 = the paper).
    divisor : int
        The result is a multiple of this.

    Returns
    -------
    int
        The scaled channel count.
    """
    if width_mult <= 0:
        raise ValueError(f"width_mult must be > 0, got {width_mult}")
    exact = channels * width_mult
    value = max(divisor, int(exact + divisor / 2) // divisor * divisor)
    if value < 0.9 * exact:
        value += divisor
    return value


class ConvBN(nn.Module):
    """Convolution (no bias) + batch normalisation, optionally + PReLU (one slope per channel).

    ``padding`` defaults to ``kernel_size // 2`` ("same" for odd kernels at stride 1).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        groups: int = 1,
        prelu: bool = True,
        padding: int | None = None,
    ) -> None:
        super().__init__()
        padding = kernel_size // 2 if padding is None else padding
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, stride, padding, groups=groups, bias=False
        )
        self.bn = nn.BatchNorm2d(out_channels)
        self.prelu = nn.PReLU(out_channels) if prelu else None

    def forward(self, x: Tensor) -> Tensor:
        x = self.bn(self.conv(x))
        return self.prelu(x) if self.prelu is not None else x


class Bottleneck(nn.Module):
    """Inverted residual bottleneck (MobileNetV2; MobileFaceNet Table 1), PReLU non-linearity.

    Parameters
    ----------
    in_channels, out_channels : int
        Channel counts.
    stride : int
        Stride of the depthwise convolution (1 or 2).
    expansion : int
        Expansion factor t.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = in_channels * expansion
        self.expand = ConvBN(in_channels, hidden, 1)
        self.dw = ConvBN(hidden, hidden, 3, stride=stride, groups=hidden)
        self.project = ConvBN(hidden, out_channels, 1, prelu=False)
        self.use_residual = stride == 1 and in_channels == out_channels

    def forward(self, x: Tensor) -> Tensor:
        y = self.project(self.dw(self.expand(x)))
        return x + y if self.use_residual else y


class MobileFaceNet(nn.Module):
    """MobileFaceNet (Chen et al., CCBR 2018, Table 1) with a width multiplier.

    Parameters
    ----------
    embedding_dim : int
        Size of the output embedding (paper: 128).  In AC4AU this is C', the per-frame feature size.
    width_mult : float
        Multiplies every channel count (paper: 1.0).  The embedding size is not scaled.
    input_size : int
        Side of the square input in pixels (paper: 112); must be a multiple of 16.
    stages : sequence of (t, c, n, s)
        Bottleneck stages; the default is the paper's table.
    stem_channels : int
        Channels of the two stem convolutions (paper: 64, before ``width_mult``).
    sep_channels : int
        Channels of the 1x1 convolution before the GDConv (paper: 512, before ``width_mult``).

    Attributes
    ----------
    feature_channels : int
        C, channels of :meth:`forward_features` (128 x ``width_mult`` rounded).
    feature_size : int
        Side of the :meth:`forward_features` map (``input_size // 16``, 7 for 112 px).
    """

    def __init__(
        self,
        embedding_dim: int = 128,
        width_mult: float = 1.0,
        input_size: int = 112,
        stages: Sequence[tuple[int, int, int, int]] = MOBILEFACENET_STAGES,
        stem_channels: int = 64,
        sep_channels: int = 512,
    ) -> None:
        super().__init__()
        if input_size % 16 != 0 or input_size <= 0:
            raise ValueError(f"input_size must be a positive multiple of 16, got {input_size}")
        if embedding_dim < 1:
            raise ValueError(f"embedding_dim must be >= 1, got {embedding_dim}")
        self.embedding_dim = embedding_dim
        self.width_mult = width_mult
        self.input_size = input_size
        stem = scaled_channels(stem_channels, width_mult)
        self.conv1 = ConvBN(3, stem, 3, stride=2)
        self.conv2_dw = ConvBN(stem, stem, 3, groups=stem)
        blocks: list[nn.Module] = []
        channels = stem
        for t, c, n, s in stages:
            out = scaled_channels(c, width_mult)
            for i in range(n):
                blocks.append(Bottleneck(channels, out, s if i == 0 else 1, t))
                channels = out
        self.blocks = nn.Sequential(*blocks)
        self.feature_channels = channels
        total_stride = 2 * math.prod(s for *_, s in stages)
        if input_size % total_stride != 0:
            raise ValueError(f"input_size {input_size} is not a multiple of the stride {total_stride}")
        self.feature_size = input_size // total_stride
        sep = scaled_channels(sep_channels, width_mult)
        self.conv_sep = ConvBN(channels, sep, 1)
        self.gdconv = ConvBN(sep, sep, self.feature_size, groups=sep, prelu=False, padding=0)
        self.embedding = ConvBN(sep, embedding_dim, 1, prelu=False)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: Tensor) -> Tensor:
        """Stem and bottlenecks.

        Parameters
        ----------
        x : Tensor of shape (N, 3, S, S), float
            Face crops, S = ``input_size``, normalised as the weights expect (see
            ``pipeline.models.ac4au.normalise_frames``).

        Returns
        -------
        Tensor of shape (N, C, S/16, S/16)
        """
        return self.blocks(self.conv2_dw(self.conv1(x)))

    def forward_head(self, fmap: Tensor) -> Tensor:
        """Output block: 1x1 conv + BN + PReLU, linear GDConv + BN, linear 1x1 conv + BN.

        Parameters
        ----------
        fmap : Tensor of shape (N, C, S/16, S/16)

        Returns
        -------
        Tensor of shape (N, embedding_dim)
        """
        return self.embedding(self.gdconv(self.conv_sep(fmap))).flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        """Face embedding of shape (N, embedding_dim) for crops of shape (N, 3, S, S)."""
        return self.forward_head(self.forward_features(x))


class WeightLoadError(RuntimeError):
    """A weight file does not fit the network (missing/unexpected keys or wrong shapes)."""


def _strip(key: str, prefixes: Sequence[str]) -> str:
    changed = True
    while changed:
        changed = False
        for p in prefixes:
            if p and key.startswith(p):
                key = key[len(p):]
                changed = True
    return key


def _listing(keys: Sequence[str], limit: int = 12) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:limit])
    return f"{len(keys)} [{shown}{', …' if len(keys) > limit else ''}]"


def read_state_dict(path: str | os.PathLike) -> dict[str, Tensor]:
    """Read a ``state_dict`` saved with ``torch.save`` (tensors only, loaded on the CPU).

    Parameters
    ----------
    path : path-like
        ``.pt``/``.pth`` file holding a mapping ``name -> Tensor``, or a mapping holding one under
        ``"state_dict"`` or ``"model"``.

    Returns
    -------
    dict
        The tensors by their stored names.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    WeightLoadError
        If the file cannot be read as tensors-only or holds no tensor mapping.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: backbone weight file not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any unpickling failure: re-raised naming the file
        raise WeightLoadError(f"{path}: not a readable torch state_dict file ({exc})") from exc
    if isinstance(obj, Mapping):
        for wrapper in ("state_dict", "model"):
            if wrapper in obj and isinstance(obj[wrapper], Mapping):
                obj = obj[wrapper]
                break
    if not isinstance(obj, Mapping) or not obj:
        raise WeightLoadError(f"{path}: expected a non-empty mapping name -> tensor (a state_dict)")
    bad = [k for k, v in obj.items() if not isinstance(v, Tensor)]
    if bad:
        raise WeightLoadError(f"{path}: entries that are not tensors: {_listing(bad)}")
    return dict(obj)


def load_backbone_weights(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    strict: bool = True,
    strip_prefixes: Sequence[str] = DEFAULT_STRIP_PREFIXES,
    rename: Callable[[str], str] | None = None,
) -> dict[str, list[str]]:
    """Load face-recognition weights into a :class:`MobileFaceNet` (or a model that holds one).

    Parameters
    ----------
    model : nn.Module
        A :class:`MobileFaceNet`, or a module with a ``backbone`` attribute that is one (directly
        or through ``frame_encoder.backbone``, as ``pipeline.models.ac4au.AC4AU``).
    path : path-like
        ``state_dict`` file in the key layout of this module's docstring.
    strict : bool
        True: every backbone key must be in the file and the file must hold nothing else.
        False: load the keys present in both, log the missing and unexpected ones.  In both
        modes a shape mismatch is an error, and so is a file with no key in common.
    strip_prefixes : sequence of str
        Prefixes removed from the file's keys (repeatedly), e.g. ``"module."``, ``"backbone."``.
    rename : callable, optional
        Applied to each key after the prefixes are stripped, to map another naming onto ours.

    Returns
    -------
    dict
        ``{"loaded": [...], "missing": [...], "unexpected": [...]}`` key lists.

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    WeightLoadError
        On missing/unexpected keys (``strict``), shape mismatches, or no common key; the
        message names the file and lists the offending keys.
    TypeError
        If ``model`` holds no :class:`MobileFaceNet`.
    """
    backbone = _find_backbone(model)
    raw = read_state_dict(path)
    state: dict[str, Tensor] = {}
    for key, value in raw.items():
        new = _strip(key, strip_prefixes)
        if rename is not None:
            new = rename(new)
        if new in state:
            raise WeightLoadError(f"{path}: two keys map to {new!r} after prefix stripping/renaming")
        state[new] = value
    own = backbone.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shape_bad = [
        f"{k} file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    common = [k for k in own if k in state]
    if shape_bad:
        raise WeightLoadError(
            f"{path}: {len(shape_bad)} tensors have the wrong shape (another width_mult, "
            f"embedding_dim or input_size?): {'; '.join(shape_bad[:8])}"
        )
    if not common:
        raise WeightLoadError(
            f"{path}: no key matches the MobileFaceNet layout (see pipeline.models.mobilefacenet); "
            f"file keys {_listing(list(state))}; expected keys {_listing(list(own))}"
        )
    if strict and (missing or unexpected):
        raise WeightLoadError(
            f"{path}: does not match the MobileFaceNet layout (strict): missing "
            f"{_listing(missing)}; unexpected {_listing(unexpected)}"
        )
    if missing or unexpected:
        log.warning(
            "%s: loaded %d tensors; missing %s; unexpected %s",
            path, len(common), _listing(missing), _listing(unexpected),
        )
    backbone.load_state_dict({k: state[k] for k in common}, strict=False)
    log.info("%s: loaded %d backbone tensors", path, len(common))
    return {"loaded": common, "missing": missing, "unexpected": unexpected}


def _find_backbone(model: nn.Module) -> MobileFaceNet:
    if isinstance(model, MobileFaceNet):
        return model
    for path in ("backbone", "frame_encoder.backbone"):
        node: object = model
        for part in path.split("."):
            node = getattr(node, part, None)
        if isinstance(node, MobileFaceNet):
            return node
    raise TypeError(f"{type(model).__name__} holds no MobileFaceNet backbone")
