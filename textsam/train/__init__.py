"""Training (``textsam train CONFIG``): recipes sam / text / clip_crops, torchrun-ready, exact resume.

Modules, in the order a run uses them:

- ``config`` (the nested ``TrainConfig`` and its tables), ``config_file`` (reading TOML/JSON, messages),
  ``config_types`` (type checks);
- ``data`` (targets, opening a ``[data]`` split, semantic class maps), ``samples`` (``SegmentationDataset``
  and its ``SampleOptions``), ``batches`` (``Sample``, ``Batch``, ``collate``, ``StepSampler``), ``cache``
  (embeddings of frozen encoders);
- ``weights`` (start weights in, ``model.safetensors`` / ``text_head.safetensors`` out, one file format),
  ``recipes`` (the model, its text head and the ``Recipe``), ``prompt_model`` (the trainable graph and its
  losses, through ``TextSam.decode``), ``losses`` (SAM's), ``evaluate``;
- ``loop`` (``train``), ``checkpoints``, ``run_folder`` (what an output folder holds, resume), ``signals``;
- ``clip_pretrain`` (a small CLIP from scratch, or an existing CLIP's image tower adapted with its text tower locked);
- ``locator_presence`` (a region locator's presence readout, on the model's own candidates).

Import the submodules directly (``textsam.train.loop.train``); nothing here is imported by inference code.
"""
