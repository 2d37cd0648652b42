"""fastzhang: Zhang et al. 2017 ("rethinking generalization") on CIFAR-10, fast and checkpointed."""

__version__ = "0.1.0"
