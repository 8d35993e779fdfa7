"""Learned motion magnification: the magnifiers, their synthetic training data and verification.

Modules: ``oh2018`` (Oh et al., ECCV 2018, full and shape-only, external-weight loading),
``stmemm`` (ST-MEMM, Wu et al., Heliyon 2024, with timm's Swin blocks), ``synthetic`` (Oh et al.'s
training-pair recipe on the face photos and procedural textures), ``eulerian`` (two-frame linear
Eulerian magnification, Wu et al. 2012, the classical reference), ``verify`` (measured
displacement / α·d, PSNR, SSIM), ``train`` (training, weight files, the ``magnifier`` stage) and
``magnify`` (latents and magnified frames for every sample, the ``magnify`` stage).
"""
