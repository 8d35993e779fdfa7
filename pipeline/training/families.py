"""The ``params.yaml`` keys of every method family, checked before any stage runs.

A ``methods.<name>`` section may hold the shared trainer keys
(:data:`pipeline.params_schema.TRAIN_KEYS`: epochs, batch_size, optimizer, scheduler, loss, …),
the method keys (:data:`pipeline.params_schema.METHOD_KEYS`: family, task, protocol, tasks,
published) and the keys its family declares here.  Any other key is rejected with the closest
valid name (``epcohs`` → ``epochs``), so a typo never runs silently on a default.

HOW TO DECLARE A FAMILY OR A KEY
    Next to ``@register("<family>")`` in its ``pipeline/training/methods_*.py``, add one entry to
    :data:`FAMILY_KEYS` here (this module imports no torch, so ``./mer`` validates in
    milliseconds)::

        FAMILY_KEYS["my_family"] = {
            "input_size": Int(64, min=8),                 # default 64, integer >= 8
            "variant": Str("a", choices=("a", "b")),
            "pretrained": PRETRAINED,                     # false | stage | true | a path
            "model": Free("checked by MyConfig.from_mapping"),   # a block checked by the builder
        }

    A new key of an existing family goes into its dict.  ``tests/test_params_schema.py`` checks
    that every registered family is declared and that the shipped ``params.yaml`` validates in
    both configurations.
"""

from __future__ import annotations

from pipeline.params_schema import Bool, Float, Free, Int, Key, List, Map, OneOf, Str

#: ``false`` | ``stage`` (the pretrain stage's weights, models/pretrain/) | ``true`` (ImageNet
#: weights, downloaded) | the path of a local state_dict (pipeline/pretrain/weights.py).
PRETRAINED = OneOf(Bool(), Str(), default=False, nullable=True,
                   what="false, stage, true or the path of a local state_dict")
AUGMENT_HFLIP = Map({"hflip": Float(0.0, min=0.0, max=1.0)})
FLOW_PAIR = Str("onset_apex", choices=("onset_apex", "onset_pseudo", "offset_apex"))

FAMILY_KEYS: dict[str, dict[str, Key]] = {}

# pipeline/training/baselines.py: constant predictors (AU and emotion floors).
FAMILY_KEYS["constant"] = {
    "rule": Str(choices=("all_positive", "prevalence", "majority")),
}

# pipeline/training/baselines.py: SSSNet (Varanka et al. 2024) on the onset→apex flow.
FAMILY_KEYS["sssnet"] = {
    "input_size": Int(64, min=8),
    "widths": List(Int(min=1), length=3),
    "dropout": Float(0.5, min=0.0, max=1.0),
    "flow_pair": FLOW_PAIR,
    "augment": AUGMENT_HFLIP,
}

# pipeline/training/baselines.py: torchvision ResNets on the flow (CD6ME / LOSO baselines).
FAMILY_KEYS["resnet_flow"] = {
    "arch": Str("resnet18", choices=("resnet18", "resnet34", "resnet50")),
    "pretrained": PRETRAINED,
    # layer1..layer4 output channels; null: torchvision's 64/128/256/512 (ImageNet weights need them)
    "widths": List(Int(min=1), length=4, nullable=True),
    "input_size": Int(224, min=8),
    "flow_pair": FLOW_PAIR,
    "augment": AUGMENT_HFLIP,
}

# pipeline/training/methods_infusenet.py: InfuseNet and the networks of its Tables 1-3.
FAMILY_KEYS["infusenet"] = {
    "variant": Str(what="an InfuseNet variant (default: the section name)"),
    "pretrained": PRETRAINED,
    "norm_scope": Str("tensor", choices=("tensor", "sample", "channel")),
    # test-time scope; null: the training scope with tensor → sample (tensor is transductive)
    "eval_norm_scope": Str(None, choices=("tensor", "sample", "channel"), nullable=True),
    "pseudo_apex_draw": Str("per_epoch", choices=("per_epoch", "fixed")),
    # end to end: Oh et al.'s encoder and manipulator fine-tuned inside InfuseNet (Sec. 3.2)
    "end_to_end": Bool(False),
    "magnifier_weights": Str("models/magnifier/oh.pt", what="a magnifier weights file"),
    "crop_size": Int(112, min=8),
    "latent_alpha": Float(10, gt=0.0),
    "latent_kind": Str("difference", choices=("difference", "manipulated")),
    "input_size": Int(224, min=8),
    "image_magnifier": Str("oh", choices=("oh", "stmemm")),
    "image_alpha": Float(10, min=0.0),
    "aux_flow_loss": Float(0.0, min=0.0),
    "flow_pair": FLOW_PAIR,
    "augment": AUGMENT_HFLIP,
    "model": Free("a mapping of pipeline.models.infusenet.InfuseNetConfig fields"),
}

# pipeline/training/methods_ac4au.py: AC4AU (ACM MM 2025) on the onset→offset sequences.
FAMILY_KEYS["ac4au"] = {
    "sequence_size": Int(112, min=8),
    "model": Free("a mapping of pipeline.models.ac4au.AC4AU_PAPER_CONFIG keys"),
}

# pipeline/training/methods_mimicking.py: the annotation-mimicking network (Ruan et al. 2022).
FAMILY_KEYS["mimicking"] = {
    "flow_source": Str("magnified", choices=("magnified", "apex")),
    "magnifier": Str("oh", choices=("oh", "stmemm")),
    "alpha": Float(6, gt=0.0),
    "mag_threshold": Float(1.5, min=0.0),
    "input_size": Int(224, min=8),
    "dual": Bool(True),
    "awm": Bool(True),
    "wscl_lambda": Float(0.3, min=0.0, max=1.0),
    "wscl_tau": Float(0.1, gt=0.0),
    "label_smoothing": Float(0.1, min=0.0, max=0.999),
    "region_replacing": Float(0.5, min=0.0, max=1.0),
    "augment": Map({"hflip": Float(0.5, min=0.0, max=1.0), "erase": Float(0.0, min=0.0, max=1.0)}),
    "model": Free("a mapping of pipeline.models.mimicking.MimickingConfig fields"),
}

# pipeline/training/methods_gam.py: GAM-MM-MER (Wu et al., Heliyon 2024).
FAMILY_KEYS["gam_mm_mer"] = {
    "magnifier": Str("stmemm", choices=("stmemm", "oh")),
    "alpha": Float(5, gt=0.0),
    "magnified": Bool(True),
    # where the region patches are centred: magnified (paper, Eq. 7) | onset (ablation)
    "patch_landmarks": Str("magnified", choices=("magnified", "onset")),
    "crop_size": Int(112, min=1),
    "input": Str("apex", choices=("apex", "apex_onset")),
    "diff_scale": Str("none", choices=("none", "sample")),
    "augment": Map({"alphas": List(Float(gt=0.0)), "p_alpha": Float(0.5, min=0.0, max=1.0),
                    "brightness": Float(0.0, min=0.0, max=0.999),
                    "contrast": Float(0.0, min=0.0, max=0.999),
                    "colour": Float(0.0, min=0.0, max=0.999)}),
    "model": Free("checked by pipeline.training.methods_gam.gam_model_config"),
}
