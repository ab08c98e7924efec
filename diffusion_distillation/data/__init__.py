"""Training data.

datasets.py        the bundled digits (a batch as a pure function of seed
                   and step), pixel scaling to [-1, 1] in one place, the
                   dataset tables
input_pipeline.py  tfds streams for CIFAR-10, ImageNet 64 and LSUN 128
"""
