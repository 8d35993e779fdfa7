"""GAM-MER: landmark-region patches of the magnified apex, a shared CNN, graph attention layers.

Wu, Xia, Hu, Ma, Yang, Li, "Facial micro-expression recognition based on motion magnification
network and graph attention mechanism", Heliyon 10 (2024) e35964, Sect. 2.2, Fig. 5, Eq. 7–9
(METHODS.md, "GAM-MM-MER").  The magnifier (ST-MEMM, Sect. 2.1) is
:mod:`pipeline.magnification.stmemm`; this module is the recogniser that reads its output:

1. **Regions** (Eq. 7) — dlib's 68 iBUG landmarks on the magnified apex select the facial
   regions relevant to micro-expressions (eyebrows, eyes, nose, mouth); the jaw contour is
   dropped (:data:`ME_REGIONS`; the ablation "all facial key areas" adds :data:`JAW_REGIONS`).
   Each region is a graph node; its patch is the ``P × P`` square centred on the mean of the
   region's landmarks, sampled bilinearly from the frame (:func:`region_centres`,
   :func:`cut_patches`).
2. **Local features** (Eq. 8) — one small CNN shared by every region (:class:`RegionCNN`).
3. **Graph** — the regions joined by their anatomical neighbours (:data:`RAW_EDGES`, the "raw
   facial graph" of Table 3) plus prior-knowledge links between distant regions that move
   together (:data:`PRIOR_EDGES`, Sect. 2.2: "the intrinsic connections between distantly
   located but strongly correlated nodes"), undirected, with self-loops (:func:`graph_edges`).
4. **Graph attention** (Eq. 9) — two GAT layers (Veličković et al., "Graph Attention
   Networks", ICLR 2018, Eq. 1–5: e_ij = LeakyReLU(aᵀ[W h_i ‖ W h_j]), α_ij = softmax over the
   neighbours j ∈ N(i) ∪ {i}, h'_i = σ(Σ_j α_ij W h_j), K heads concatenated) from PyTorch
   Geometric (``torch_geometric.nn.GATConv``); Table 3's ablation "graph convolution network"
   uses ``GCNConv`` (Kipf & Welling, ICLR 2017) with the same widths.  Then the class output.

What the paper leaves open, and what we chose:

* **Node granularity.** "Facial landmark regions" without a list.  Ours: twelve regions from
  the iBUG indices (:data:`ME_REGIONS`): each eyebrow split into inner and outer halves (AU1 vs
  AU2; AU4 pulls the inner half), each eye, the nasal root and the nose base (AU9), the two mouth
  corners (AU12/14/15), the upper lip (AU10) and the lower lip (AU16/17/25); "all regions" adds
  the right jaw line, the chin and the left jaw line (points 0–5, 6–10, 11–16).  Right/left are
  the subject's (``_right`` regions are on the image's left).
* **Prior-knowledge links.** Not listed.  Ours, from the AU combinations of the emotions the
  databases code (Ekman & Friesen's EMFACS prototypes; CASME II / SAMM's AU–emotion tables):
  left–right counterparts (bilateral AUs: outer brows, eyes, mouth corners); eye ↔ mouth corner
  of the same side (AU6 + AU12, happiness); inner brow ↔ mouth corner (AU1/AU4 + AU15,
  sadness and negative); nasal root ↔ upper lip (AU9 + AU10, disgust); outer brow ↔ lower lip
  (AU2 + AU26, surprise).  With the jaw regions: chin ↔ inner brows (AU17 + AU4, negative).
* **Raw graph.** Not given; ours joins anatomically adjacent regions (:data:`RAW_EDGES`).
* **Patch size and sampling.** Not given.  Ours: ``patch_size`` pixels of the frame (quick
  24 px on 112-px frames, paper configuration 48 px on 224-px frames: the same share of the
  face),
  bilinear (``torchvision.ops.roi_align``, one sample per output pixel: patch pixel (u, v) is
  the frame at (cx − (P−1)/2 + u, cy − (P−1)/2 + v), as ``cv2.getRectSubPix``), the border
  pixel repeated up to one pixel outside the frame, zero beyond.
* **CNN.** "CNN is selected as the basic module" only.  Ours: three 3×3 conv–BN–ReLU blocks
  (``cnn_channels``, default 16, 32, 64), 2×2 max-pooling after the first two, global average
  pooling; the input in [0, 1] is centred to [−1, 1].
* **GAT widths.** Not given.  Ours: ``heads`` (4) heads of ``hidden`` (16) features per layer,
  concatenated in every layer (hidden width ``heads × hidden``), ELU and dropout between layers,
  attention dropout ``attention_dropout``; negative slope 0.2 (Veličković et al.).
* **Class output.** "Output the micro-expression category".  Ours: the node features of the last
  graph layer concatenated in the fixed region order (``readout: concat``; ``mean`` averages
  them), dropout, one linear layer → logits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = [
    "GAMMER",
    "JAW_REGIONS",
    "ME_REGIONS",
    "PRIOR_EDGES",
    "RAW_EDGES",
    "Region",
    "RegionCNN",
    "cut_patches",
    "graph_edges",
    "region_centres",
    "region_set",
]


@dataclass(frozen=True)
class Region:
    """One graph node: a named facial region and its 0-based iBUG 68-point landmark indices."""

    name: str
    points: tuple[int, ...]


#: The micro-expression regions (Sect. 2.2: eyebrows, eyes, nose, mouth), in node order.
ME_REGIONS: tuple[Region, ...] = (
    Region("brow_right_outer", (17, 18, 19)),
    Region("brow_right_inner", (19, 20, 21)),
    Region("brow_left_inner", (22, 23, 24)),
    Region("brow_left_outer", (24, 25, 26)),
    Region("eye_right", (36, 37, 38, 39, 40, 41)),
    Region("eye_left", (42, 43, 44, 45, 46, 47)),
    Region("nose_root", (27, 28, 29, 30)),
    Region("nose_base", (31, 32, 33, 34, 35)),
    Region("mouth_corner_right", (48, 49, 59, 60)),
    Region("mouth_corner_left", (53, 54, 55, 64)),
    Region("upper_lip", (50, 51, 52, 61, 62, 63)),
    Region("lower_lip", (56, 57, 58, 65, 66, 67)),
)

#: The jaw contour (points 0–16), dropped by the paper; added by the "all regions" ablation.
JAW_REGIONS: tuple[Region, ...] = (
    Region("jaw_right", (0, 1, 2, 3, 4, 5)),
    Region("chin", (6, 7, 8, 9, 10)),
    Region("jaw_left", (11, 12, 13, 14, 15, 16)),
)

#: Anatomical neighbours (the raw facial graph), undirected, by region name.
RAW_EDGES: tuple[tuple[str, str], ...] = (
    ("brow_right_outer", "brow_right_inner"), ("brow_right_inner", "brow_left_inner"),
    ("brow_left_inner", "brow_left_outer"),
    ("brow_right_outer", "eye_right"), ("brow_right_inner", "eye_right"),
    ("brow_left_inner", "eye_left"), ("brow_left_outer", "eye_left"),
    ("brow_right_inner", "nose_root"), ("brow_left_inner", "nose_root"),
    ("eye_right", "nose_root"), ("eye_left", "nose_root"), ("nose_root", "nose_base"),
    ("nose_base", "upper_lip"), ("nose_base", "mouth_corner_right"),
    ("nose_base", "mouth_corner_left"),
    ("upper_lip", "mouth_corner_right"), ("upper_lip", "mouth_corner_left"),
    ("lower_lip", "mouth_corner_right"), ("lower_lip", "mouth_corner_left"),
    ("upper_lip", "lower_lip"),
    # jaw contour (only with the "all regions" ablation)
    ("jaw_right", "eye_right"), ("jaw_right", "mouth_corner_right"), ("jaw_right", "chin"),
    ("chin", "lower_lip"), ("chin", "jaw_left"),
    ("jaw_left", "mouth_corner_left"), ("jaw_left", "eye_left"),
)

#: Prior-knowledge links between distant regions whose AUs co-occur (module docstring).
PRIOR_EDGES: tuple[tuple[str, str], ...] = (
    ("brow_right_outer", "brow_left_outer"),          # bilateral AU2
    ("eye_right", "eye_left"),                        # bilateral AU6/AU7
    ("mouth_corner_right", "mouth_corner_left"),      # bilateral AU12/AU15
    ("eye_right", "mouth_corner_right"),              # AU6 + AU12 (happiness)
    ("eye_left", "mouth_corner_left"),
    ("brow_right_inner", "mouth_corner_right"),       # AU1/AU4 + AU15 (sadness, negative)
    ("brow_left_inner", "mouth_corner_left"),
    ("nose_root", "upper_lip"),                       # AU9 + AU10 (disgust)
    ("brow_right_outer", "lower_lip"),                # AU2 + AU26 (surprise)
    ("brow_left_outer", "lower_lip"),
    ("chin", "brow_right_inner"),                     # AU17 + AU4 (negative); jaw ablation only
    ("chin", "brow_left_inner"),
)


def region_set(name: str) -> tuple[Region, ...]:
    """The nodes of region set ``name``: ``"me"`` (the paper's) or ``"all"`` (+ the jaw contour).

    Raises
    ------
    ValueError
        On another name.
    """
    if name == "me":
        return ME_REGIONS
    if name == "all":
        return ME_REGIONS + JAW_REGIONS
    raise ValueError(f"region set must be 'me' or 'all', got {name!r}")


def graph_edges(regions: Sequence[Region], prior: bool = True) -> Tensor:
    """Directed edge list of the region graph (both directions of every undirected edge).

    Edges whose two regions are both in ``regions`` are kept; self-loops are not listed (the graph
    layers add them).

    Parameters
    ----------
    regions : sequence of Region
        The nodes, in node order.
    prior : bool
        Add :data:`PRIOR_EDGES` to :data:`RAW_EDGES` (False: the raw facial graph, Table 3).

    Returns
    -------
    Tensor of shape (2, E), int64
        ``edge_index[0]`` source, ``edge_index[1]`` target node indices, sorted, no duplicates.

    Raises
    ------
    ValueError
        If two regions share a name.
    """
    index = {r.name: i for i, r in enumerate(regions)}
    if len(index) != len(regions):
        raise ValueError("region names must be unique")
    pairs = set()
    for a, b in RAW_EDGES + (PRIOR_EDGES if prior else ()):
        if a in index and b in index:
            pairs.add((index[a], index[b]))
            pairs.add((index[b], index[a]))
    edges = sorted(pairs)
    if not edges:
        return torch.zeros((2, 0), dtype=torch.int64)
    return torch.tensor(edges, dtype=torch.int64).t().contiguous()


def region_centres(landmarks: Tensor, regions: Sequence[Region]) -> Tensor:
    """Patch centres: the mean of each region's landmarks.

    Parameters
    ----------
    landmarks : Tensor of shape (B, 68, 2), float
        iBUG points (x, y) in pixels of the frame (pixel (i, j) has its centre at x = j, y = i).
    regions : sequence of Region

    Returns
    -------
    Tensor of shape (B, R, 2), float32
        (x, y) per region, same units.

    Raises
    ------
    ValueError
        If ``landmarks`` is not ``(B, 68, 2)`` or holds a non-finite value.
    """
    if landmarks.ndim != 3 or tuple(landmarks.shape[1:]) != (68, 2):
        raise ValueError(f"landmarks must be (B, 68, 2), got {tuple(landmarks.shape)}")
    if not torch.isfinite(landmarks).all():
        raise ValueError("landmarks hold non-finite values")
    lm = landmarks.float()
    return torch.stack([lm[:, list(r.points)].mean(dim=1) for r in regions], dim=1)


def cut_patches(frames: Tensor, centres: Tensor, patch_size: int) -> Tensor:
    """``P × P`` patches centred on given points, bilinear (module docstring, "Patch size").

    Parameters
    ----------
    frames : Tensor of shape (B, C, H, W), float
    centres : Tensor of shape (B, R, 2), float
        (x, y) in pixels; patch pixel (u, v) samples the frame at
        (x − (P−1)/2 + u, y − (P−1)/2 + v).
    patch_size : int
        P.

    Returns
    -------
    Tensor of shape (B, R, C, P, P), float (the dtype of ``frames``)

    Raises
    ------
    ValueError
        On mismatched batch sizes or P < 1.
    """
    from torchvision.ops import roi_align

    if patch_size < 1:
        raise ValueError(f"patch_size must be >= 1, got {patch_size}")
    b, r = centres.shape[:2]
    if frames.shape[0] != b:
        raise ValueError(f"{frames.shape[0]} frames but centres for {b}")
    half = patch_size / 2.0
    c = centres.reshape(b * r, 2).to(frames.dtype) + 0.5   # pixel index → continuous coordinate
    batch = torch.arange(b, device=frames.device).repeat_interleave(r).to(frames.dtype)
    boxes = torch.stack([batch, c[:, 0] - half, c[:, 1] - half, c[:, 0] + half, c[:, 1] + half],
                        dim=1)
    out = roi_align(frames, boxes, output_size=patch_size, spatial_scale=1.0, sampling_ratio=1,
                    aligned=True)
    return out.reshape(b, r, frames.shape[1], patch_size, patch_size)


class RegionCNN(nn.Module):
    """The local feature extractor shared by every region (Eq. 8; module docstring, "CNN").

    Parameters
    ----------
    channels : sequence of int
        Output channels of the conv blocks (2×2 max-pooling after every block but the last).
    in_channels : int

    Input ``(N, C, P, P)`` in [0, 1] → output ``(N, channels[-1])``.
    """

    def __init__(self, channels: Sequence[int] = (16, 32, 64), in_channels: int = 3):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = in_channels
        for k, c in enumerate(channels):
            layers += [nn.Conv2d(c_in, c, 3, padding=1, bias=False), nn.BatchNorm2d(c),
                       nn.ReLU(inplace=True)]
            if k < len(channels) - 1:
                layers.append(nn.MaxPool2d(2))
            c_in = c
        self.features = nn.Sequential(*layers)
        self.out_dim = int(c_in)

    def forward(self, x: Tensor) -> Tensor:
        return self.features(x * 2.0 - 1.0).mean(dim=(2, 3))


def _batched_edges(edge_index: Tensor, n_graphs: int, n_nodes: int) -> Tensor:
    """The edge list of ``n_graphs`` copies of one graph, node ids offset by ``n_nodes`` each."""
    offsets = torch.arange(n_graphs, device=edge_index.device).repeat_interleave(
        edge_index.shape[1]) * n_nodes
    return edge_index.repeat(1, n_graphs) + offsets


class GAMMER(nn.Module):
    """GAM-MER: frame + landmarks → region patches → shared CNN → graph layers → class logits.

    Parameters
    ----------
    n_classes : int
    regions : sequence of Region
        Graph nodes (:func:`region_set`).
    edge_index : Tensor of shape (2, E), int64
        :func:`graph_edges` over ``regions``.
    patch_size : int
        P in frame pixels.
    conv : {"gat", "gcn"}
        Graph layer: ``torch_geometric.nn.GATConv`` (paper) or ``GCNConv`` (Table 3 ablation).
    layers : int
        Number of graph layers (paper 2; Table 3: 1 and 3).
    hidden : int
        Features per head.
    heads : int
        Attention heads (GAT); a GCN layer has ``heads × hidden`` features, the same width.
    cnn_channels : sequence of int
    dropout : float
        Dropout between graph layers and before the classifier.
    attention_dropout : float
        Dropout on the attention coefficients (GAT).
    readout : {"concat", "mean"}
    in_channels : int
        Channels of the frames (3: the magnified apex, the paper's input; 6: with the
        difference image of :mod:`pipeline.training.methods_gam`'s ``input: apex_onset``).

    Raises
    ------
    ValueError
        On an unknown ``conv`` or ``readout``, ``layers`` < 1, or an edge naming a node outside
        ``regions``.
    ImportError
        If PyTorch Geometric is not installed.
    """

    def __init__(self, n_classes: int, regions: Sequence[Region], edge_index: Tensor,
                 patch_size: int, conv: str = "gat", layers: int = 2, hidden: int = 16,
                 heads: int = 4, cnn_channels: Sequence[int] = (16, 32, 64),
                 dropout: float = 0.3, attention_dropout: float = 0.0,
                 readout: str = "concat", in_channels: int = 3):
        super().__init__()
        from torch_geometric.nn import GATConv, GCNConv

        if conv not in ("gat", "gcn"):
            raise ValueError(f"conv must be 'gat' or 'gcn', got {conv!r}")
        if readout not in ("concat", "mean"):
            raise ValueError(f"readout must be 'concat' or 'mean', got {readout!r}")
        if int(layers) < 1:
            raise ValueError(f"layers must be >= 1, got {layers}")
        self.regions = tuple(regions)
        n = len(self.regions)
        if edge_index.numel() and (int(edge_index.min()) < 0 or int(edge_index.max()) >= n):
            raise ValueError(f"edge_index names nodes outside 0..{n - 1}")
        self.register_buffer("edge_index", edge_index.to(torch.int64).clone(), persistent=False)
        self.patch_size = int(patch_size)
        self.conv_kind = conv
        self.readout = readout
        self.cnn = RegionCNN(cnn_channels, in_channels=in_channels)
        width = heads * hidden
        self.graph = nn.ModuleList()
        c_in = self.cnn.out_dim
        for _ in range(int(layers)):
            if conv == "gat":
                self.graph.append(GATConv(c_in, hidden, heads=heads, concat=True,
                                          negative_slope=0.2, dropout=attention_dropout,
                                          add_self_loops=True))
            else:
                self.graph.append(GCNConv(c_in, width, add_self_loops=True, normalize=True))
            c_in = width
        self.act = nn.ELU()
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(width * (n if readout == "concat" else 1), n_classes)

    def node_features(self, frames: Tensor, landmarks: Tensor) -> Tensor:
        """Per-region CNN features ``(B, R, F)`` of frames ``(B, C, H, W)`` in [0, 1]."""
        centres = region_centres(landmarks, self.regions)
        patches = cut_patches(frames.float(), centres, self.patch_size)
        b, r = patches.shape[:2]
        return self.cnn(patches.flatten(0, 1)).reshape(b, r, -1)

    def forward(self, frames: Tensor, landmarks: Tensor) -> Tensor:
        """Class logits.

        Parameters
        ----------
        frames : Tensor of shape (B, C, H, W), float in [0, 1]
            Magnified apex frames (or apex crops for the "raw image" ablation), C =
            ``in_channels``.
        landmarks : Tensor of shape (B, 68, 2)
            dlib points of each frame, pixels.

        Returns
        -------
        Tensor of shape (B, n_classes)
        """
        x = self.node_features(frames, landmarks)
        b, r, f = x.shape
        edges = _batched_edges(self.edge_index, b, r)
        h = x.reshape(b * r, f)
        for k, layer in enumerate(self.graph):
            h = layer(h, edges)
            h = self.act(h)
            if k < len(self.graph) - 1:
                h = self.drop(h)
        h = h.reshape(b, r, -1)
        h = h.flatten(1) if self.readout == "concat" else h.mean(dim=1)
        return self.head(self.drop(h))
