"""CIFAR-10 in, device batches out.

cifar.py (read + validate + fingerprint) -> randomize.py (the paper's variants)
-> batches.py (resident on the device, epoch plans, preprocessed batches).
download.py finds, downloads and extracts; safe_pickle.py guards the python
layout; seeds.py names the random streams; synthetic.py is the test data set;
preprocess.py is the one crop + whiten reference.

Nothing is imported here, so `import fastzhang.data.cifar` stays free of torch.
"""
