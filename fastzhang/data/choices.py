"""The data an experiment may ask for, by name: data sets and randomizations.

One list each. config validates against them and `fastzhang run --help` lists
them; data/sources.py loads the data sets (data/cifar.py's CifarSpec describes
CIFAR-10's and CIFAR-100's files and classes) and data/randomize.py implements
the randomizations. Plain names, so reading them imports no numpy.
"""

DATASETS = ("cifar10", "cifar100", "synthetic")
# The paper's §2.1 variants; "partial" is label corruption at level corrupt_prob.
RANDOMIZATIONS = ("none", "partial", "random_labels", "shuffled_pixels", "random_pixels", "gaussian")
