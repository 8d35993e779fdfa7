"""SSSNet, the shallow single-stream network on an optical-flow image: the CD6ME reference.

Varanka, Peng, Zhao, "Micro-expression recognition with noisy labels", IS&T Electronic Imaging
(HVEI) 2021; used as the CD6ME baseline by Varanka et al., "Data leakage and evaluation issues in
micro-expression analysis", IEEE TAFFC 2024 (published CD6ME average binary F1 40.5 %, quoted in
Khor et al. SCIA 2025 Table 1 and in AC4AU Table 1).  METHODS.md, "Baselines".

Architecture (the defaults are the published ones; facts as in the CD6ME reference tooling):

* input: optical-flow image (u, v, ε), ``(B, 3, 64, 64)``;
* conv 5x5 → 32 channels (stride 1, no padding), ReLU, max-pool 3 (stride 3), batch norm,
  2-D (channel) dropout 0.5;
* conv 3x3 → 64 channels, ReLU, max-pool 2 (stride 2), batch norm, 2-D dropout 0.5;
* flatten (64 × 9 × 9 at 64 px), FC → 256, ReLU, dropout 0.5, FC → outputs.

What is ours: the flattened width is computed from ``input_size`` (any side ≥ 16 px works; the
paper uses 64), and the number of input channels is a parameter.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["SSSNet"]


class SSSNet(nn.Module):
    """Shallow single-stream CNN (two convolutions, two fully connected layers).

    Parameters
    ----------
    n_outputs : int
        Logits: 12 AUs (CD6ME, multi-label) or the number of emotion classes.
    in_channels : int
        Input channels (3 for (u, v, ε)).
    input_size : int
        Input side S in pixels (paper: 64).
    widths : tuple of 3 int
        Channels of the two convolutions and width of the hidden FC layer (paper: 32, 64, 256).
    dropout : float
        Dropout probability after each block and before the last layer (paper: 0.5).

    Raises
    ------
    ValueError
        If ``input_size`` is too small for the two conv/pool blocks.
    """

    def __init__(self, n_outputs: int, in_channels: int = 3, input_size: int = 64,
                 widths: tuple[int, int, int] = (32, 64, 256), dropout: float = 0.5):
        super().__init__()
        c1, c2, hidden = widths
        side = ((input_size - 4) // 3 - 2) // 2
        if side < 1:
            raise ValueError(f"SSSNet: input_size {input_size} px is too small (needs >= 16)")
        self.input_size = input_size
        self.block1 = nn.Sequential(
            nn.Conv2d(in_channels, c1, kernel_size=5), nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=3), nn.BatchNorm2d(c1), nn.Dropout2d(dropout))
        self.block2 = nn.Sequential(
            nn.Conv2d(c1, c2, kernel_size=3), nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=2, stride=2), nn.BatchNorm2d(c2), nn.Dropout2d(dropout))
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(c2 * side * side, hidden), nn.ReLU(inplace=True),
            nn.Dropout(dropout), nn.Linear(hidden, n_outputs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, n_outputs)`` of a flow image batch ``(B, in_channels, S, S)``."""
        if x.shape[-1] != self.input_size or x.shape[-2] != self.input_size:
            raise ValueError(f"SSSNet expects {self.input_size}x{self.input_size} px input, "
                             f"got {tuple(x.shape[-2:])}")
        return self.head(self.block2(self.block1(x)))
