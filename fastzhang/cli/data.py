"""`fastzhang data info`: where the data set was found, what it holds, which one it is."""

from __future__ import annotations

import time

from fastzhang.data.choices import DATASETS


def add_parser(sub) -> None:
    p = sub.add_parser("data", help="inspect the data set (where it is, counts, fingerprint)")
    actions = p.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    info = actions.add_parser("info", help="find (or download) the data set and describe it",
                              description="Find the data set and describe it. When it is absent this downloads "
                                          "the tarball (CIFAR-10: 163 MB) into the data folder and extracts it "
                                          "(178 MB) into ~/.cache/fastzhang ($FASTZHANG_CACHE); --no-download "
                                          "refuses instead.")
    info.add_argument("--data-dir", default=None,
                      help="folder with the data set (default: $FASTZHANG_DATA, else ./data)")
    info.add_argument("--dataset", choices=DATASETS, default="cifar10")
    info.add_argument("--no-download", action="store_true", help="fail instead of downloading when absent")
    info.set_defaults(func=run_info)


def run_info(args) -> int:
    import numpy as np

    from fastzhang.data.sources import load_dataset

    start = time.perf_counter()
    arrays = load_dataset(args.dataset, args.data_dir, download=not args.no_download)
    seconds = time.perf_counter() - start
    lines = [f"source:       {arrays.source}", f"layout:       {arrays.layout}"]
    if arrays.batches_dir != arrays.source:
        lines.append(f"extracted to: {arrays.batches_dir}")
    lines += [f"train images: {len(arrays.train_labels):,}", f"test images:  {len(arrays.test_labels):,}",
              f"load time:    {seconds:.2f} s"]
    train = np.bincount(arrays.train_labels, minlength=arrays.num_classes)
    test = np.bincount(arrays.test_labels, minlength=arrays.num_classes)
    digits, width = len(str(arrays.num_classes - 1)), max(12, *map(len, arrays.classes))
    lines.append(f"{'class':<{digits + width + 1}}{'train':>8}{'test':>8}")
    for k, name in enumerate(arrays.classes):
        lines.append(f"{k:<{digits}} {name:<{width}}{train[k]:>8,}{test[k]:>8,}")
    lines.append(f"fingerprint:          {arrays.fingerprint}  ({arrays.fingerprint_name or 'unknown data set'})")
    name = arrays.content_fingerprint_name or "unknown images and labels"
    lines.append(f"content fingerprint:  {arrays.content_fingerprint}  ({name}; order-independent)")
    print("\n".join(lines))
    return 0
