"""Importers that turn published checkpoints of other projects into vqgen runs.

``taming``: taming-transformers' VQGAN (``vqgan_imagenet_f16_16384.ckpt`` + its ``model.yaml``) into a
vqgen tokenizer run. Checkpoints are read by :mod:`vqgen.convert.pickle_reader`, which never runs code
from the file. See docs/convert.md.
"""
