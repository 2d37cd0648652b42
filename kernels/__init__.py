"""Triton kernels, each beside its torch reference and tested against it; installed as fastzhang.kernels.

preprocess_triton.fused_preprocess: gather + crop + per-image whitening + cast in
one kernel; reference fastzhang.data.preprocess.preprocess. Importing this package
never imports triton; the kernel modules do, and report `available()`.
"""
