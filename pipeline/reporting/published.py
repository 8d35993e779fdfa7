"""Published numbers of the methods and baselines, with their sources.

All values are fractions in [0, 1] as printed in the cited tables (percentages divided by 100).
They were obtained on the *real* databases; a stand-in run is never comparable with them, and the
report says so.

CD6ME (binary F1 per AU pooled over the six leave-one-database-out folds, "Average" = their mean):

* Khor et al., "Infused Suppression Of Magnification Artefacts For Micro-AU Detection", SCIA
  2025, Table 1 (SSSNet, ResNet18/34 on OF quoted from Varanka et al. 2024 [22]; ResNet18 OF
  per-AU values are the authors' own re-run, average 0.3828; InfuseNet(Res18) 0.4230; the
  magnified-input, late-fusion and ViT-Tiny rows of Table 1, the decoded-image row of Table 3).
* "AC4AU" (apex-free AU detection), ACM MM 2025, Table 1 (AC4AU 0.40508; it quotes ResNet18 on
  OF at 0.37233, another per-AU row than InfuseNet's Table 1), Table 2 (ablations) and Table 3
  (sensitivity to γ), averages only.

LOSO emotion (accuracy / UF1 / UAR on pooled predictions):

* Ruan et al., "Mimicking the annotation process for recognizing the micro expressions", ACM MM
  2022, Table 3 (theirs and SSSN [10] five-class) and Table 4 (ablation "sb": a single-branch
  ResNet18 on their magnified-apex + flow-magnitude input, five classes — the closest published
  ResNet18 LOSO number, not the same input as our flow baseline; the other Table 4 rows are the
  ablations of ``train@mimicking``).
* Wu et al., "GAM-MM-MER", Heliyon 2024, Tables 1 (three classes, incl. SMIC-HS) and 2 (five
  classes); Table 3 (architecture ablations) and Table 4 (magnification factor, "Raw Image"),
  CASME II and SAMM in three and five classes.  Its Table 1 prints SSSN's CASME II/SAMM numbers with the same values as Ruan et
  al.'s five-class table; we store them under five classes (Khor et al., ICIP 2019, the SSSN
  paper, evaluates five classes on CASME II and SAMM) and take only SMIC-HS from Wu Table 1.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.training.protocols import CD6ME_AUS

__all__ = ["PUBLISHED", "Published", "published_for"]


@dataclass(frozen=True)
class Published:
    """Published numbers of one method.

    Attributes
    ----------
    name : str
        The method as the paper names it.
    source : str
        Paper and table.
    task : {"au", "emotion"}
    f1_mean : float, optional
        CD6ME "Average" binary F1.
    f1_per_au : dict, optional
        CD6ME per-AU binary F1.
    results : dict, optional
        Emotion: task key (``casme2-5``, ``samm-3``, ``smic-3``, …) → ``{"accuracy", "uf1",
        "uar"}`` (only those the paper prints).
    note : str
        What differs from our setting.
    """

    name: str
    source: str
    task: str
    f1_mean: float | None = None
    f1_per_au: dict[str, float] = field(default_factory=dict)
    results: dict[str, dict[str, float]] = field(default_factory=dict)
    note: str = ""

    def as_dict(self) -> dict:
        """JSON form, as stored in ``metrics/<method>.json`` under ``paper``."""
        out: dict = {"name": self.name, "source": self.source}
        if self.task == "au":
            out["f1_mean"] = self.f1_mean
            if self.f1_per_au:
                out["f1_per_au"] = dict(self.f1_per_au)
        else:
            out["results"] = {k: dict(v) for k, v in self.results.items()}
        if self.note:
            out["note"] = self.note
        return out


def _aus(values: str) -> dict[str, float]:
    nums = [float(v) for v in values.split()]
    if len(nums) != len(CD6ME_AUS):
        raise ValueError(f"expected {len(CD6ME_AUS)} per-AU values, got {len(nums)}")
    return dict(zip(CD6ME_AUS, nums, strict=True))


_KHOR = "Khor et al., SCIA 2025, Table 1"
_AC4AU = "AC4AU, ACM MM 2025, Table 1"
_AC4AU_T2 = "AC4AU, ACM MM 2025, Table 2"
_RUAN3 = "Ruan et al., ACM MM 2022, Table 3"
_RUAN4 = "Ruan et al., ACM MM 2022, Table 4"
_WU = "Wu et al., Heliyon 2024"

#: Published entries, keyed by the name a method's ``published:`` parameter uses.
PUBLISHED: dict[str, Published] = {
    "sssnet_cd6me": Published(
        "SSSNet (OF)", f"{_KHOR} (from Varanka et al., IEEE TAFFC 2024)", "au", 0.4050,
        _aus("0.7460 0.7210 0.8750 0.1360 0.0530 0.4860 0.2030 0.1930 0.3620 0.4080 0.2270 "
             "0.4470"),
        note="64 px optical flow; AC4AU Table 1 quotes the same row (0.40475)"),
    "resnet18_flow_cd6me": Published(
        "ResNet18 (OF)", _KHOR, "au", 0.3828,
        _aus("0.6018 0.6541 0.6595 0.1612 0.1645 0.4362 0.2227 0.2378 0.3828 0.3298 0.3152 "
             "0.4276"),
        note="ImageNet-pretrained, 224 px; AC4AU Table 1 quotes 0.37233 for ResNet18 [Varanka "
             "et al.] with other per-AU values"),
    "resnet34_flow_cd6me": Published(
        "ResNet34 (OF)", f"{_KHOR} (from Varanka et al., IEEE TAFFC 2024)", "au", 0.3710,
        _aus("0.7210 0.7170 0.8580 0.1120 0.0540 0.3870 0.1600 0.1350 0.3650 0.3990 0.1480 "
             "0.3920")),
    "infusenet_cd6me": Published(
        "InfuseNet (Res18)", _KHOR, "au", 0.4230,
        _aus("0.6997 0.6804 0.7921 0.1929 0.1572 0.4438 0.3263 0.2987 0.3987 0.3523 0.2973 "
             "0.4364")),
    "resnet18_mag_cd6me": Published(
        "ResNet18 (Mag)", _KHOR, "au", 0.3243,
        _aus("0.4739 0.4252 0.6276 0.1685 0.1321 0.3442 0.2291 0.1576 0.3230 0.3788 0.2338 "
             "0.3979"),
        note="FrameMag: the magnified latent in place of conv1's output; Table 2 reports "
             "FrameMag at 0.2877"),
    "late_fusion_cd6me": Published(
        "ResNet18 (Late-fusion)", f"{_KHOR}; Table 2 (FrameFlow + FrameMag)", "au", 0.2937,
        _aus("0.4820 0.4341 0.5962 0.1588 0.1454 0.3157 0.2161 0.1179 0.3020 0.3057 0.1467 "
             "0.3033")),
    "infusenet_image_cd6me": Published(
        "InfuseNet (Res18), decoded magnified image", "Khor et al., SCIA 2025, Table 3", "au",
        0.3758, note="FrameMag fed the decoded magnified apex instead of the latent; average only"),
    "vit_tiny_flow_cd6me": Published(
        "ViT-Tiny (OF)", _KHOR, "au", 0.4128,
        _aus("0.6924 0.7353 0.7984 0.2129 0.1510 0.4785 0.2371 0.1987 0.3742 0.3877 0.2871 "
             "0.3999"),
        note="the paper cites TinyViT [26]; ours is timm's vit_tiny_patch16_224"),
    "vit_tiny_mag_cd6me": Published(
        "ViT-Tiny (Mag)", _KHOR, "au", 0.3088,
        _aus("0.4942 0.4896 0.6469 0.1389 0.1620 0.3296 0.1941 0.1259 0.3041 0.3196 0.1723 "
             "0.3281"),
        note="how the latent enters a ViT is not published; ours: a patch-8 embedding"),
    "infusenet_vit_cd6me": Published(
        "InfuseNet (ViT-Tiny)", _KHOR, "au", 0.4172,
        _aus("0.6951 0.7100 0.7743 0.1917 0.1734 0.4361 0.3227 0.2287 0.3892 0.3513 0.2902 "
             "0.4431"),
        note="infusion points in a ViT are not published; ours: after blocks 3, 6, 9, 12 and "
             "the pooled class token"),
    "ac4au_cd6me": Published(
        "AC4AU", _AC4AU, "au", 0.40508,
        _aus("0.589 0.571 0.772 0.448 0.068 0.342 0.309 0.250 0.345 0.475 0.367 0.325")),
    # AC4AU Table 2 (ablations) and Table 3 (γ), averages only; each is a `dvc exp run -S` of
    # train@ac4au (docs/methods/ac4au.md).  Rows 2-5 of Table 2 and all of Table 3 are pre-trained.
    "ac4au_no_pretraining_cd6me": Published(
        "AC4AU without pre-training", _AC4AU_T2, "au", 0.22270,
        note="Table 2 row 1: MobileFaceNet trained from scratch (our quick default)"),
    "ac4au_no_frd_cd6me": Published(
        "AC4AU without FRD", _AC4AU_T2, "au", 0.27226,
        note="Table 2 row 2: the temporal transformer runs on F, no L_DC"),
    "ac4au_no_auser_cd6me": Published(
        "AC4AU without AUsER", _AC4AU_T2, "au", 0.29647,
        note="Table 2 row 3: one linear head after the temporal transformer and pooling"),
    "ac4au_bce_cd6me": Published(
        "AC4AU with BCE", _AC4AU_T2, "au", 0.32046,
        note="Table 2 row 4: binary cross-entropy instead of the focal loss of Eq. 8"),
    **{f"ac4au_gamma{g}_cd6me": Published(
        f"AC4AU, γ = {g}", "AC4AU, ACM MM 2025, Table 3", "au", f1,
        note="L = γ·L_DC + L_AU with another γ (paper: 0.1)")
       for g, f1 in (("0.2", 0.36839), ("0.3", 0.35192), ("0.5", 0.34528), ("0.7", 0.30598))},
    "sssnet_loso": Published(
        "SSSN", f"{_RUAN3} (five classes) and {_WU} Table 1 (SMIC-HS)", "emotion",
        results={"casme2-5": {"accuracy": 0.712, "uf1": 0.715},
                 "samm-5": {"accuracy": 0.566, "uf1": 0.451},
                 "smic-3": {"accuracy": 0.6341, "uf1": 0.6329}},
        note="Khor et al., ICIP 2019 (dual-stream shallow networks), single-stream variant"),
    "resnet18_flow_loso": Published(
        "single-branch ResNet18 ('sb')", _RUAN4, "emotion",
        results={"casme2-5": {"accuracy": 0.8008, "uf1": 0.7921},
                 "samm-5": {"accuracy": 0.7574, "uf1": 0.7218}},
        note="input: magnified apex + On-A/Off-A flow magnitudes (not plain flow), 224 px"),
    "gam_mm_mer_loso": Published(
        "GAM-MM-MER", f"{_WU}, Tables 1 and 2", "emotion",
        results={"casme2-3": {"accuracy": 0.9157, "uf1": 0.9122},
                 "samm-3": {"accuracy": 0.9125, "uf1": 0.9134},
                 "smic-3": {"accuracy": 0.8622, "uf1": 0.8710},
                 "casme2-5": {"accuracy": 0.8609, "uf1": 0.8655},
                 "samm-5": {"accuracy": 0.8788, "uf1": 0.8817}},
        note="the paper's F1 is read as UF1; its text gives SAMM five-class F1 90.24 % where "
             "Table 2 prints 88.17 % (stored)"),
    # GAM-MM-MER ablations (Wu et al., Heliyon 2024, Table 3: architecture; Table 4: α), CASME
    # II and SAMM only; each is a `dvc exp run -S` of train@gam_mm_mer (docs/methods/gam_mm_mer.md).
    **{f"gam_mm_mer_{key}_loso": Published(
        f"GAM-MM-MER, {label}", f"{_WU}, Table {table}", "emotion",
        results={"casme2-3": {"accuracy": c3[0], "uf1": c3[1]},
                 "casme2-5": {"accuracy": c5[0], "uf1": c5[1]},
                 "samm-3": {"accuracy": s3[0], "uf1": s3[1]},
                 "samm-5": {"accuracy": s5[0], "uf1": s5[1]}},
        note=note)
       for key, label, table, c3, c5, s3, s5, note in (
           ("three_gat", "three GAT layers", 3, (0.8957, 0.8916), (0.8261, 0.8237),
            (0.8750, 0.8709), (0.8182, 0.8198), "'Add one layer GAT'; model.layers=3"),
           ("one_gat", "one GAT layer", 3, (0.8795, 0.8780), (0.8087, 0.8068),
            (0.8500, 0.8476), (0.7913, 0.7879), "'Remove one layer GAT'; model.layers=1"),
           ("gcn", "graph convolution network", 3, (0.8535, 0.8543), (0.7780, 0.7819),
            (0.8467, 0.8428), (0.7692, 0.7705), "GCN instead of GAT; model.conv=gcn"),
           ("all_regions", "all facial key areas", 3, (0.8634, 0.8675), (0.8183, 0.8204),
            (0.8431, 0.8406), (0.8302, 0.8267), "jaw contour kept; model.regions=all"),
           ("raw_graph", "raw facial graph", 3, (0.9046, 0.9010), (0.8495, 0.8512),
            (0.9013, 0.9034), (0.8660, 0.8637), "no prior-knowledge edges; model.graph=raw"),
           ("no_magnification", "raw image", 4, (0.7868, 0.7902), (0.7432, 0.7474),
            (0.7946, 0.7921), (0.7684, 0.7706), "apex without magnification; magnified=false"),
           ("alpha10", "α = 10", 4, (0.8876, 0.8884), (0.8257, 0.8288), (0.8902, 0.8913),
            (0.8447, 0.8468), "magnification factor 10 instead of 5; alpha=10"),
           ("alpha20", "α = 20", 4, (0.8349, 0.8307), (0.7891, 0.7936), (0.8472, 0.8492),
            (0.7989, 0.8006), "α = 20; needs 20 in magnify.frames.stmemm and "
            "patches.magnified.stmemm"),
       )},
    "mimicking_loso": Published(
        "Dual-branch annotation-mimicking network", _RUAN3, "emotion",
        results={"casme2-5": {"accuracy": 0.833, "uf1": 0.827, "uar": 0.850},
                 "samm-5": {"accuracy": 0.794, "uf1": 0.758, "uar": 0.751},
                 "casme2-3": {"accuracy": 0.932, "uf1": 0.925, "uar": 0.924},
                 "samm-3": {"accuracy": 0.865, "uf1": 0.816, "uar": 0.805}}),
    # Ruan et al. Table 4 (ablations, five classes, Acc / UF1); each is a `dvc exp run -S` of
    # train@mimicking (docs/methods/mimicking.md).  Its "db + all" row equals
    # Table 3's five-class numbers (mimicking_loso).  The apex-vs-magnified flow choice
    # (Sec. 4.3) has no published numbers.
    **{key: Published(name, _RUAN4, "emotion",
                      results={"casme2-5": {"accuracy": c_acc, "uf1": c_uf1},
                               "samm-5": {"accuracy": s_acc, "uf1": s_uf1}}, note=note)
       for key, name, c_acc, c_uf1, s_acc, s_uf1, note in (
           ("mimicking_sb_loso", "single branch ('sb')", 0.8008, 0.7921, 0.7574, 0.7218,
            "dual: false, wscl_lambda: 0"),
           ("mimicking_sb_au_loso", "single branch + AU alignment ('sb + AU')", 0.8008, 0.7871,
            0.7206, 0.6560, "dual: false"),
           ("mimicking_db_loso", "dual branch ('db')", 0.8008, 0.7828, 0.7500, 0.6925,
            "awm: false, wscl_lambda: 0"),
           ("mimicking_db_au_loso", "dual branch + AU alignment, without AWM ('db + AU')",
            0.8171, 0.7974, 0.7574, 0.7338, "awm: false"),
           ("mimicking_db_awm_loso", "dual branch + AWM, without WSCL ('db + AWM')", 0.8252,
            0.7957, 0.7721, 0.7347, "wscl_lambda: 0"),
           ("mimicking_no_rr_loso", "without Region Replacing ('db + all w/o RR')", 0.8171,
            0.8188, 0.7647, 0.7019, "region_replacing: 0"))},
}


def published_for(key: str | None) -> Published | None:
    """The entry ``key`` (a method's ``published:`` parameter), None for None.

    Raises
    ------
    KeyError
        If ``key`` is not in :data:`PUBLISHED` (listing the known keys).
    """
    if key in (None, ""):
        return None
    if key not in PUBLISHED:
        raise KeyError(f"no published entry {key!r}; known: {sorted(PUBLISHED)}")
    return PUBLISHED[key]
