"""`make gpu-check`: one prepared command that says within minutes whether the CUDA path is right and how fast.

For a machine with one CUDA GPU and no network that has a CUDA build of torch >= 2.5,
Triton, numpy, PyYAML and pytest. fastzhang and the few packages such a machine may
lack (orjson, tqdm) are installed with `pip --no-index --target` into a scratch
folder from the wheel folder that `make gpu-wheels` fills (bench/wheels/, carried
along with the checkout); see install.py and wheels.py.

Stages (plan.py holds their list and time limits), each in its own process with its
own time limit; a failed or timed-out stage is a FAIL row and the next one still runs:

    A environment   B Triton preprocessing   C fast-path correctness   D resumption
    E speed         F packing                G Table 1 rows (only with GPU_CHECK_DATA)

Environment:
    FASTZHANG_GPU_DRY_RUN=1  every stage's plumbing on the CPU at tiny sizes (Triton through
                             its interpreter, no compile): the test suite runs it
    GPU_CHECK_OUT            where the summary, logs and scratch go (default bench/out/gpu)
    GPU_CHECK_DATA           a CIFAR-10 folder: adds stage G
    GPU_CHECK_TABLE1_S       stage G's own time limit in seconds (default 480)
    GPU_CHECK_WHEELS         the wheel folder (default bench/wheels)

Output in GPU_CHECK_OUT: summary.json and summary.md (one row per check), logs/<stage>.log,
stages/<stage>.json (rows as they are written), work/<stage>/ (the runs' files),
cache/ (compiler caches, emptied at the start), pydeps/ (the scratch install, reused
while the sources and the wheel folder are unchanged).
"""
