"""Learning-based video motion magnification (Oh et al., ECCV 2018), full and shape-only.

T.-H. Oh, R. Jaroensri, C. Kim, M. Elgharib, F. Durand, W. T. Freeman, W. Matusik,
"Learning-based video motion magnification", ECCV 2018, Sec. 3.1 and Fig. 2; METHODS.md,
"Learned motion magnification".

Architecture (all convolutions bias-free with reflection padding, as in the authors' code):

* **Encoder** (shared by both frames): 7x7 conv stride 1 → 16 ch + ReLU, 3x3 conv stride 2 → 32
  ch + ReLU, 3 residual blocks (H/2, 32 ch).  *Texture branch*: 3x3 conv stride 2 + ReLU, 2
  residual blocks → V (32 ch, H/4).  *Shape branch*: 3x3 conv stride 1 + ReLU, 2 residual blocks
  → M (32 ch, H/2).
* **Manipulator** on the shape representations M_a, M_b of frames a, b::

      Δ̂ = h((α − 1) · g(M_b − M_a)),   M̂ = M_b + Δ̂

  g = 7x7 conv + ReLU, h = 3x3 conv + 1 residual block.  The paper's Eq. 1 is written
  G_m = M_a + h(α · g(M_b − M_a)); the authors' code (and every public port, among them
  InfuseNet's) uses the form above, based on M_b with the factor α − 1.  The two agree on what is
  learned (motion α·d relative to frame a), but only the M_b form makes α = 1 an exact identity:
  since g and h have no biases and ReLU is positively homogeneous, h(c·x) = c·h(x) for c ≥ 0, so
  Δ̂ is exactly linear in (α − 1) and vanishes at α = 1 (M̂ = M_b, the output reconstructs frame
  b).  An M_a-based form with factor α − 1 could not fit targets at all α at once (it would need
  Δ̂ ∝ α/(α − 1)), which is why we follow the code.
* **Decoder**: V upsampled x2 (nearest) + 3x3 conv + ReLU, concatenated with M̂ (64 ch), 9
  residual blocks, upsample x2, 3x3 conv → 32 ch + ReLU, 7x7 conv → 3 ch.  The output has frame b's
  texture and the magnified shape.

Shape-only variant (``texture_branch=False``, the network of InfuseNet's ref. code): no texture
branch; the decoder takes M̂ alone (9 residual blocks at 32 ch, then the same up-sampling tail).
InfuseNet uses the manipulator's magnified difference Δ̂ (32 ch at H/2) as its latent
(:meth:`OhMagNet.magnified_difference`).

Images enter in [−1, 1] (``x / 127.5 − 1``, RGB), :func:`to_model_range`; the output is in the
same range (clip it, :func:`from_model_range`).  Any H, W divisible by 4 (2 for shape-only).

Weight file key layout (:func:`load_oh_weights`; ``state_dict`` names and shapes, C = 32, T = 32
texture channels, D = 64 decoder channels for the full network and 32 for shape-only)::

    encoder.conv1.weight                     (16, 3, 7, 7)
    encoder.conv2.weight                     (32, 16, 3, 3)     stride 2
    encoder.resblks.{0,1,2}.conv{1,2}.weight (32, 32, 3, 3)
    encoder.conv1_shape.weight               (32, 32, 3, 3)
    encoder.resblks_shape.{0,1}.conv{1,2}.weight (32, 32, 3, 3)
    encoder.conv1_texture.weight             (32, 32, 3, 3)     stride 2   [full only]
    encoder.resblks_texture.{0,1}.conv{1,2}.weight (32, 32, 3, 3)          [full only]
    manipulator.convblks.0.conv1.weight      (32, 32, 7, 7)     g
    manipulator.convblks_after.0.conv1.weight (32, 32, 3, 3)    h: conv
    manipulator.resblks.0.conv{1,2}.weight   (32, 32, 3, 3)     h: residual block
    decoder.conv_texture.weight              (32, 32, 3, 3)                [full only]
    decoder.resblks.{0..8}.conv{1,2}.weight  (D, D, 3, 3)
    decoder.conv1.weight                     (32, D, 3, 3)
    decoder.conv2.weight                     (3, 32, 7, 7)

The shape-only layout is exactly that of the ``MagNet`` of InfuseNet's public code (its
``generator_*.pth`` checkpoints load as they are); a ``module.`` prefix (DataParallel) is stripped.
The full layout is also read under the names of the public PyTorch port of Oh et al.'s network
(``models/deep_motion_mag`` of github.com/cfosco/deepfake_detection, checkpoints
``ckpt/ckpt_e00.pth.tar`` … ``ckpt_e11.pth.tar``, one per epoch, the weights under
``state_dict`` with the ``module.`` prefix): :data:`KEY_ALIASES` maps its three differing names
``encoder.conv1_text`` → ``encoder.conv1_texture``, ``encoder.resblks_text`` →
``encoder.resblks_texture`` and ``decoder.conv1_text`` → ``decoder.conv_texture``; every other key
and every shape is the same.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = [
    "OhMagNet",
    "KEY_ALIASES",
    "WeightLayoutError",
    "alpha_tensor",
    "describe_layout",
    "from_model_range",
    "load_oh_weights",
    "oh_key_layout",
    "to_model_range",
]

Alpha = float | torch.Tensor


def _conv(c_in: int, c_out: int, k: int, stride: int = 1) -> nn.Conv2d:
    """Bias-free k x k convolution with reflection padding (k // 2)."""
    return nn.Conv2d(c_in, c_out, k, stride=stride, padding=k // 2, padding_mode="reflect",
                     bias=False)


class ResBlock(nn.Module):
    """conv3x3 → ReLU → conv3x3, plus the input (Oh et al. 2018, after Johnson et al. 2016)."""

    def __init__(self, channels: int, kernel_size: int = 3):
        super().__init__()
        self.conv1 = _conv(channels, channels, kernel_size)
        self.conv2 = _conv(channels, channels, kernel_size)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(self.relu(self.conv1(x)))


class _ConvReLU(nn.Module):
    def __init__(self, c_in: int, c_out: int, k: int, relu: bool):
        super().__init__()
        self.conv1 = _conv(c_in, c_out, k)
        self.relu = nn.ReLU() if relu else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.conv1(x))


class Encoder(nn.Module):
    """Shared encoder: common trunk, shape branch and (optionally) texture branch."""

    def __init__(self, channels: int = 32, n_resblk: int = 3, n_shape_resblk: int = 2,
                 n_texture_resblk: int = 2, texture_branch: bool = True):
        super().__init__()
        self.conv1 = _conv(3, channels // 2, 7)
        self.conv2 = _conv(channels // 2, channels, 3, stride=2)
        self.resblks = nn.Sequential(*[ResBlock(channels) for _ in range(n_resblk)])
        self.conv1_shape = _conv(channels, channels, 3)
        self.resblks_shape = nn.Sequential(*[ResBlock(channels) for _ in range(n_shape_resblk)])
        self.texture_branch = texture_branch
        if texture_branch:
            self.conv1_texture = _conv(channels, channels, 3, stride=2)
            self.resblks_texture = nn.Sequential(
                *[ResBlock(channels) for _ in range(n_texture_resblk)])
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        c = self.relu(self.conv1(x))
        c = self.relu(self.conv2(c))
        c = self.resblks(c)
        shape = self.resblks_shape(self.relu(self.conv1_shape(c)))
        texture = None
        if self.texture_branch:
            texture = self.resblks_texture(self.relu(self.conv1_texture(c)))
        return texture, shape


class Manipulator(nn.Module):
    """Δ̂ = h((α − 1)·g(M_b − M_a)), M̂ = M_b + Δ̂ (Oh et al. 2018, Eq. 1 as in the authors' code)."""

    def __init__(self, channels: int = 32, g_kernel: int = 7, n_resblk: int = 1):
        super().__init__()
        self.convblks = nn.Sequential(_ConvReLU(channels, channels, g_kernel, relu=True))
        self.convblks_after = nn.Sequential(_ConvReLU(channels, channels, 3, relu=False))
        self.resblks = nn.Sequential(*[ResBlock(channels) for _ in range(n_resblk)])

    def forward(self, shape_a: torch.Tensor, shape_b: torch.Tensor,
                alpha: Alpha) -> tuple[torch.Tensor, torch.Tensor]:
        factor = alpha_tensor(alpha, shape_a) - 1.0
        diff = self.convblks(shape_b - shape_a) * factor
        diff = self.resblks(self.convblks_after(diff))
        return diff, shape_b + diff


class Decoder(nn.Module):
    """Texture (up-sampled) ‖ magnified shape → residual blocks → up-sampling → RGB."""

    def __init__(self, channels: int = 32, n_resblk: int = 9, texture_branch: bool = True):
        super().__init__()
        self.texture_branch = texture_branch
        dims = 2 * channels if texture_branch else channels
        if texture_branch:
            self.conv_texture = _conv(channels, channels, 3)
        self.resblks = nn.Sequential(*[ResBlock(dims) for _ in range(n_resblk)])
        self.conv1 = _conv(dims, channels, 3)
        self.conv2 = _conv(channels, 3, 7)
        self.relu = nn.ReLU()
        self.up = nn.Upsample(scale_factor=2, mode="nearest")

    def forward(self, texture: torch.Tensor | None, shape: torch.Tensor) -> torch.Tensor:
        if self.texture_branch:
            if texture is None:
                raise ValueError("the full Oh et al. decoder needs the texture representation")
            t = self.relu(self.conv_texture(self.up(texture)))
            if t.shape[-2:] != shape.shape[-2:]:
                raise ValueError(f"texture {tuple(t.shape)} and shape {tuple(shape.shape)} "
                                 "representations differ in size: H and W must be divisible by 4")
            x = torch.cat([t, shape], dim=1)
        else:
            x = shape
        x = self.resblks(x)
        x = self.relu(self.conv1(self.up(x)))
        return self.conv2(x)


def alpha_tensor(alpha: Alpha, like: torch.Tensor) -> torch.Tensor:
    """α as a (B, 1, 1, 1) tensor (or a scalar tensor) on ``like``'s device and dtype."""
    a = torch.as_tensor(alpha, dtype=like.dtype, device=like.device)
    if a.ndim == 1:
        if a.shape[0] != like.shape[0]:
            raise ValueError(f"{a.shape[0]} magnification factors for a batch of {like.shape[0]}")
        a = a.view(-1, 1, 1, 1)
    elif a.ndim > 1:
        raise ValueError(f"α must be a scalar or a (B,) vector, got shape {tuple(a.shape)}")
    return a


class OhMagNet(nn.Module):
    """The Oh et al. (2018) magnifier: encoder, manipulator, decoder.

    Parameters
    ----------
    texture_branch : bool
        ``True``: the paper's network (texture + shape).  ``False``: the shape-only variant of
        InfuseNet's ref. code.
    channels : int
        Width of the shape and texture representations (paper: 32).
    n_enc_resblk, n_shape_resblk, n_texture_resblk, n_man_resblk, n_dec_resblk : int
        Residual blocks in the encoder trunk (3), shape branch (2), texture branch (2),
        manipulator h (1) and decoder (9) — the paper's values.
    g_kernel : int
        Kernel size of g in the manipulator (7, the authors' code).
    """

    def __init__(self, texture_branch: bool = True, channels: int = 32, n_enc_resblk: int = 3,
                 n_shape_resblk: int = 2, n_texture_resblk: int = 2, n_man_resblk: int = 1,
                 n_dec_resblk: int = 9, g_kernel: int = 7):
        super().__init__()
        self.texture_branch = texture_branch
        self.channels = channels
        self.encoder = Encoder(channels, n_enc_resblk, n_shape_resblk, n_texture_resblk,
                               texture_branch)
        self.manipulator = Manipulator(channels, g_kernel, n_man_resblk)
        self.decoder = Decoder(channels, n_dec_resblk, texture_branch)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Texture (B, 32, H/4, W/4) or ``None``, and shape (B, 32, H/2, W/2) of frames in [−1, 1]."""
        return self.encoder(x)

    def magnified_difference(self, frame_a: torch.Tensor, frame_b: torch.Tensor,
                             alpha: Alpha) -> torch.Tensor:
        """The manipulator's magnified difference Δ̂ = h((α − 1)·g(M_b − M_a)) (InfuseNet's latent).

        Parameters
        ----------
        frame_a, frame_b : Tensor of shape (B, 3, H, W), float, in [−1, 1]
            E.g. onset and apex.
        alpha : float or Tensor of shape (B,)
            Magnification factor α.

        Returns
        -------
        Tensor of shape (B, 32, H/2, W/2)
        """
        _, shape_a = self.encoder(frame_a)
        _, shape_b = self.encoder(frame_b)
        return self.manipulator(shape_a, shape_b, alpha)[0]

    def forward(self, frame_a: torch.Tensor, frame_b: torch.Tensor, alpha: Alpha) -> torch.Tensor:
        """Magnify the motion from ``frame_a`` to ``frame_b`` by α.

        Parameters
        ----------
        frame_a, frame_b : Tensor of shape (B, 3, H, W), float, in [−1, 1]
            H, W divisible by 4 (full) or 2 (shape-only).
        alpha : float or Tensor of shape (B,)
            Magnification factor; α = 1 reproduces frame b (up to the auto-encoder's error).

        Returns
        -------
        Tensor of shape (B, 3, H, W)
            The magnified frame b (motion α·d relative to frame a), not clipped.
        """
        _, shape_a = self.encoder(frame_a)
        texture_b, shape_b = self.encoder(frame_b)
        _, shape_mag = self.manipulator(shape_a, shape_b, alpha)
        return self.decoder(texture_b, shape_mag)


def to_model_range(images: np.ndarray | torch.Tensor, device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 RGB images (N, H, W, 3) → float32 tensor (N, 3, H, W) in [−1, 1] (x / 127.5 − 1)."""
    t = torch.as_tensor(np.ascontiguousarray(images)).to(device)
    if t.ndim == 3:
        t = t[None]
    if t.ndim != 4 or t.shape[-1] != 3:
        raise ValueError(f"expected RGB images (N, H, W, 3), got shape {tuple(t.shape)}")
    return t.permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)


def from_model_range(x: torch.Tensor) -> np.ndarray:
    """Tensor (N, 3, H, W) in [−1, 1] → uint8 RGB (N, H, W, 3), clipped and rounded."""
    y = ((x.detach().float().clamp(-1.0, 1.0) + 1.0) * 127.5).round()
    return y.permute(0, 2, 3, 1).to(torch.uint8).cpu().numpy()


class WeightLayoutError(ValueError):
    """A weight file does not fit the network's key layout (names or shapes)."""


def oh_key_layout(model: OhMagNet) -> dict[str, tuple[int, ...]]:
    """The network's ``state_dict`` key layout: parameter name → shape (see the module docstring)."""
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


#: Key prefixes of other public layouts → ours (the PyTorch port of Oh et al.'s full network in
#: github.com/cfosco/deepfake_detection, ``models/deep_motion_mag/network.py``).
KEY_ALIASES = {
    "encoder.conv1_text.": "encoder.conv1_texture.",
    "encoder.resblks_text.": "encoder.resblks_texture.",
    "decoder.conv1_text.": "decoder.conv_texture.",
}


def _alias(key: str) -> str:
    key = key.removeprefix("module.")
    for old, new in KEY_ALIASES.items():
        if key.startswith(old):
            return new + key[len(old):]
    return key


def describe_layout(state: Mapping[str, torch.Tensor]) -> str:
    """What a state dict (after :data:`KEY_ALIASES`) looks like, for error messages.

    Returns one of: ``"a full (texture + shape) Oh et al. network"``, ``"a shape-only Oh et al.
    network (InfuseNet's MagNet)"``, ``"an ST-MEMM network (pipeline.magnification.stmemm)"`` or
    ``"an unknown layout (first keys: …)"``.
    """
    keys = set(state)
    if any(k.startswith(("encoder.conv1_texture.", "encoder.resblks_texture.",
                         "decoder.conv_texture.")) for k in keys):
        return "a full (texture + shape) Oh et al. network"
    if "encoder.conv1_shape.weight" in keys and any(k.startswith("manipulator.") for k in keys):
        return "a shape-only Oh et al. network (InfuseNet's MagNet)"
    if any(k.startswith(("shallow.", "mmtb.", "conv_relu.")) for k in keys):
        return "an ST-MEMM network (pipeline.magnification.stmemm)"
    return f"an unknown layout (first keys: {', '.join(sorted(keys)[:4])})"


def _extract_state_dict(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model", "generator"):
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
        if all(isinstance(v, torch.Tensor) for v in obj.values()) and obj:
            return {_alias(str(k)): v for k, v in obj.items()}
    raise WeightLayoutError(
        f"{path}: expected a PyTorch state_dict (a mapping of parameter names to tensors, or a "
        f"checkpoint holding one under 'state_dict' / 'model' / 'generator'), got {type(obj).__name__}")


def load_oh_weights(model: OhMagNet, path: str | os.PathLike) -> OhMagNet:
    """Load external PyTorch weights for :class:`OhMagNet` from ``path``, strictly.

    Parameters
    ----------
    model : OhMagNet
        The network to fill (its ``texture_branch`` must match the file).
    path : path
        A ``torch.save``'d state dict in the key layout of the module docstring (optionally
        wrapped in a checkpoint dict under ``state_dict``/``model``/``generator``; a ``module.``
        prefix is removed and the public port's names are mapped by :data:`KEY_ALIASES`).  Read
        with ``weights_only=True`` (no code is executed).

    Returns
    -------
    OhMagNet
        ``model``, with the weights loaded.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    WeightLayoutError
        Naming the file, what its layout is (:func:`describe_layout`), and listing missing keys,
        unexpected keys and shape mismatches (with the setting to change when the file is of the
        other variant, full vs shape-only).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: Oh et al. magnifier weight file not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - unpickling errors come in many types
        raise WeightLayoutError(f"{path}: not a readable PyTorch weight file ({exc})") from exc
    state = _extract_state_dict(obj, path)
    expected = oh_key_layout(model)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(f"{k}: file {tuple(state[k].shape)}, network {expected[k]}"
                   for k in set(expected) & set(state) if tuple(state[k].shape) != expected[k])
    if missing or unexpected or wrong:
        layout = describe_layout(state)
        ours = ("full (texture + shape)" if model.texture_branch else "shape-only")
        hint = f" The file holds {layout}; the model is the {ours} network."
        if layout.startswith("a full") and not model.texture_branch:
            hint += " Set magnifier.oh.texture_branch: true."
        elif layout.startswith("a shape-only") and model.texture_branch:
            hint += " Set magnifier.oh.texture_branch: false."
        parts = []
        for name, items in (("missing", missing), ("unexpected", unexpected),
                            ("shape mismatch", wrong)):
            if items:
                shown = ", ".join(items[:6]) + (f", … ({len(items)} in all)" if len(items) > 6 else "")
                parts.append(f"{name}: {shown}")
        raise WeightLayoutError(
            f"{path}: weights do not fit the Oh et al. magnifier key layout "
            f"(see pipeline/magnification/oh2018.py) — " + "; ".join(parts) + "." + hint)
    model.load_state_dict({k: state[k].to(torch.float32) for k in expected}, strict=True)
    return model
