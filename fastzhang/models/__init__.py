"""The paper's five networks as plain nn.Modules, built by name; this package imports nothing else of fastzhang.

registry.py lists them without importing torch (so nothing is imported here); build.py builds
one by name, its initial weights a function of the seed alone; measure.py counts trainable
parameters and FLOPs. Each network maps a float [B, 3, 28, 28] batch to [B, num_classes] logits.
"""
