"""ST-MEMM: Swin Transformer-based micro-expression motion magnification (Wu et al., 2024).

Wu, ... "Facial micro-expression recognition based on motion magnification network and graph
attention mechanism", Heliyon 2024, Sec. 2.1, Eq. 1–5, Fig. 3–4
(the workplace's ``shared/papers/gam_mm_mer_heliyon2024.txt``; METHODS.md, "GAM-MM-MER").

* **Encoder M_e** (Eq. 1–2), shared by the two frames: a *shallow encoder* E_S (3x3 conv → C +
  ReLU, 3x3 conv stride 2 → C, giving F(S) at H/2) and a *deep encoder* E_D (residual Swin
  Transformer blocks, RSTB, on F(S), giving F(D)).  F(MIX) = 1x1 conv of [F(S) ‖ F(D)].
* **Manipulator M_m** (Eq. 3)::

      F_M = F_1(MIX) + ConvRes(α · ConvReLU(F_2(MIX) − F_1(MIX)))

  ConvReLU = 3x3 conv + ReLU, ConvRes = 3x3 conv + residual block; both bias-free, so
  F_M = F_1(MIX) exactly at α = 0 and F_M is exactly linear in α (the same argument as for
  Oh et al.'s manipulator).
* **Decoder M_d**: the Mixed Magnified Transformer module (RSTBs, Eq. 4) and the reconstruction
  module I_G = Conv(ConvTrans(F_MMTB + F_M)) (Eq. 5): a stride-2 transposed convolution back to H
  and a 3x3 convolution to RGB (the inverse of the shallow encoder).

RSTB (Fig. 4, after SwinIR, Liang et al. 2021): ``depth`` Swin Transformer layers (timm's
``SwinTransformerBlock``, windows of M x M, every second layer shifted by M/2) followed by a 3x3
convolution, plus the block's input.

What the paper does not give and is ours: the widths, depths, heads and window size (defaults
after SwinIR-light: C = 60, two RSTBs of 6 layers in encoder and decoder, 6 heads, M = 8, MLP
ratio 2); how F(S) and F(D) are "mixed" (concatenation + 1x1 conv); the stride of the shallow
encoder (2, so that the transposed convolution of Eq. 5 restores the input size).  Images in
[−1, 1] like Oh et al.'s; H/2 and W/2 should be multiples of the window size (other sizes are
zero-padded inside each Swin layer by timm, with a dynamically computed attention mask).
The training data are Oh et al.'s synthetic recipe (paper Sec. 3.1.1; here
:mod:`pipeline.magnification.synthetic`); Adam, β = (0.9, 0.999), batch 4, lr 1e-5 (Sec. 3.3).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from timm.models.swin_transformer import SwinTransformerBlock
from torch import nn

from pipeline.magnification.oh2018 import Alpha, ResBlock, alpha_tensor

__all__ = ["RSTB", "STMEMM"]


class RSTB(nn.Module):
    """Residual Swin Transformer Block: Swin layers, a 3x3 conv, and a skip (Fig. 4).

    Parameters
    ----------
    dim : int
        Channels C.
    depth : int
        Swin Transformer layers; layer i uses a shift of ``window_size // 2`` when i is odd.
    num_heads, window_size, mlp_ratio : int, int, float
        Passed to ``timm.models.swin_transformer.SwinTransformerBlock``.
    """

    def __init__(self, dim: int, depth: int, num_heads: int, window_size: int,
                 mlp_ratio: float = 2.0):
        super().__init__()
        self.layers = nn.ModuleList([
            SwinTransformerBlock(
                dim=dim, input_resolution=(4 * window_size, 4 * window_size),
                num_heads=num_heads, window_size=window_size,
                shift_size=0 if i % 2 == 0 else window_size // 2,
                always_partition=True, dynamic_mask=True, mlp_ratio=mlp_ratio)
            for i in range(depth)])
        self.conv = nn.Conv2d(dim, dim, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W) → (B, C, H, W)."""
        y = x.permute(0, 2, 3, 1)  # Swin layers work on (B, H, W, C)
        for layer in self.layers:
            y = layer(y)
        return x + self.conv(y.permute(0, 3, 1, 2).contiguous())


class STMEMM(nn.Module):
    """ST-MEMM (Wu et al. 2024): shallow conv + RSTB encoder, Eq. 3 manipulator, RSTB decoder.

    Parameters
    ----------
    dim : int
        Feature channels C (ours: 60).
    encoder_depths, decoder_depths : sequence of int
        Swin layers of each RSTB of the deep encoder E_D and of the Mixed Magnified Transformer
        module M_MMTB (ours: two RSTBs of 6 each).
    num_heads : int
        Attention heads per Swin layer (ours: 6; must divide ``dim``).
    window_size : int
        Swin window side M in feature pixels (ours: 8).
    mlp_ratio : float
        Hidden width of the Swin MLPs relative to C (ours: 2).
    """

    def __init__(self, dim: int = 60, encoder_depths: Sequence[int] = (6, 6),
                 decoder_depths: Sequence[int] = (6, 6), num_heads: int = 6,
                 window_size: int = 8, mlp_ratio: float = 2.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} must be divisible by num_heads {num_heads}")
        self.dim = dim
        self.window_size = window_size
        # shallow encoder E_S (Eq. 1)
        self.shallow = nn.Sequential(
            nn.Conv2d(3, dim, 3, padding=1, padding_mode="reflect"), nn.ReLU(),
            nn.Conv2d(dim, dim, 3, stride=2, padding=1, padding_mode="reflect"))
        # deep encoder E_D (Eq. 2)
        self.deep = nn.Sequential(*[RSTB(dim, d, num_heads, window_size, mlp_ratio)
                                    for d in encoder_depths])
        self.mix = nn.Conv2d(2 * dim, dim, 1)
        # manipulator M_m (Eq. 3), bias-free
        self.conv_relu = nn.Sequential(nn.Conv2d(dim, dim, 3, padding=1, padding_mode="reflect",
                                                 bias=False), nn.ReLU())
        self.conv_res = nn.Sequential(nn.Conv2d(dim, dim, 3, padding=1, padding_mode="reflect",
                                                bias=False), ResBlock(dim))
        # decoder M_d: M_MMTB (Eq. 4) and reconstruction (Eq. 5)
        self.mmtb = nn.Sequential(*[RSTB(dim, d, num_heads, window_size, mlp_ratio)
                                    for d in decoder_depths])
        self.conv_trans = nn.ConvTranspose2d(dim, dim, 4, stride=2, padding=1)
        self.reconstruct = nn.Sequential(nn.ReLU(), nn.Conv2d(dim, 3, 3, padding=1,
                                                              padding_mode="reflect"))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """F(MIX) (B, C, H/2, W/2) of frames (B, 3, H, W) in [−1, 1] (Eq. 1–2)."""
        f_s = self.shallow(x)
        f_d = self.deep(f_s)
        return self.mix(torch.cat([f_s, f_d], dim=1))

    def manipulate(self, f_1: torch.Tensor, f_2: torch.Tensor, alpha: Alpha) -> torch.Tensor:
        """F_M = F_1 + ConvRes(α · ConvReLU(F_2 − F_1)) (Eq. 3); α scalar or (B,)."""
        return f_1 + self.conv_res(alpha_tensor(alpha, f_1) * self.conv_relu(f_2 - f_1))

    def decode(self, f_m: torch.Tensor) -> torch.Tensor:
        """I_G = Conv(ConvTrans(M_MMTB(F_M) + F_M)) (Eq. 4–5), (B, 3, H, W) in about [−1, 1]."""
        return self.reconstruct(self.conv_trans(self.mmtb(f_m) + f_m))

    def forward(self, frame_1: torch.Tensor, frame_2: torch.Tensor, alpha: Alpha) -> torch.Tensor:
        """Magnify the motion from ``frame_1`` to ``frame_2`` by α.

        Parameters
        ----------
        frame_1, frame_2 : Tensor of shape (B, 3, H, W), float, in [−1, 1]
            H and W even.
        alpha : float or Tensor of shape (B,)
            Magnification factor; α = 0 reconstructs frame 1, α = 1 approximates frame 2.

        Returns
        -------
        Tensor of shape (B, 3, H, W)
            The magnified frame (motion α·d relative to frame 1, frame 1's texture), not clipped.
        """
        if frame_1.shape[-1] % 2 or frame_1.shape[-2] % 2:
            raise ValueError(f"ST-MEMM needs even H and W, got {tuple(frame_1.shape[-2:])}")
        return self.decode(self.manipulate(self.encode(frame_1), self.encode(frame_2), alpha))
