"""Training: SAM's losses, datasets and prompt sampling, recipes (sam / text / clip_crops), the
torchrun-ready loop (``textsam train CONFIG``) and a small-CLIP contrastive pretrainer.

Import the submodules directly (``textsam.train.loop.train``); nothing here is imported by inference code.
"""
