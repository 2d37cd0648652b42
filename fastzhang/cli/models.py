"""`fastzhang models`: the registered networks, their trainable parameters against Table 1, and their FLOPs."""

from __future__ import annotations

from fastzhang.data.choices import DATASETS


def add_parser(sub) -> None:
    p = sub.add_parser(
        "models",
        help="list the models: trainable parameters vs the paper's Table 1, forward FLOPs",
        description="Build each model with one output per class of the data set and, for CIFAR-10's 10 "
        "classes, compare its trainable parameters with Table 1 of Zhang et al. 2017 where the paper has "
        "the model. Exits 1 if any count differs.",
    )
    p.add_argument("--dataset", choices=DATASETS, default="cifar10",
                   help="build for this data set's classes (default: cifar10, Table 1's)")
    p.set_defaults(func=run)


def run(args) -> int:
    from fastzhang.models.build import build_model
    from fastzhang.models.measure import count_trainable, forward_flops
    from fastzhang.data.sources import classes
    from fastzhang.models.registry import MODELS

    num_classes = len(classes(args.dataset))
    print(f"{args.dataset}: {num_classes} classes")
    header = ("model", "trainable params", "paper (Table 1)", "match", "forward MFLOPs/image*")
    rows = []
    all_match = True
    for name, entry in MODELS.items():
        model = build_model(name, num_classes=num_classes)
        # Table 1 counts CIFAR-10's models: 10 outputs
        params, paper = count_trainable(model), entry.paper_params if num_classes == 10 else None
        match = "—" if paper is None else "yes" if params == paper else "NO"
        all_match &= match != "NO"
        flops = forward_flops(model)
        rows.append((name, f"{params:,}", "—" if paper is None else f"{paper:,}", match, f"{flops / 1e6:,.1f}"))
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]
    align = ["<", ">", ">", "^", ">"]
    for row in (header, tuple("-" * w for w in widths), *rows):
        print("  ".join(f"{cell:{a}{w}}" for cell, a, w in zip(row, align, widths)).rstrip())
    print(
        "\n* convolutions and matrix products of one 3x28x28 image (1 multiply-add = 2 FLOPs), counted by\n"
        "  torch.utils.flop_counter.FlopCounterMode; pooling, LRN, BatchNorm and elementwise ops are not counted."
    )
    return 0 if all_match else 1
