"""CIFAR-10 or CIFAR-100 in, device batches out.

sources.py (the data set by name) -> randomize.py (the paper's variants)
-> batches.py (resident on the device, epoch plans, preprocessed batches).
sources.py takes CIFAR-10 / CIFAR-100 from download.py (finds, downloads, extracts)
and cifar.py (its CifarSpec per data set; reads + validates + fingerprints), or the generated test set from
synthetic.py; choices.py names the data sets and randomizations; safe_pickle.py
guards the python layout; seeds.py names the random streams; preprocess.py is
the one crop + whiten reference.

Nothing is imported here, so `import fastzhang.data.cifar` stays free of torch.
"""
