"""`fastzhang batch` (placeholder until its issue lands)."""


def add_parser(sub) -> None:
    p = sub.add_parser("batch", help="(not yet available)")
    p.set_defaults(func=lambda args: print("fastzhang batch: not yet available") or 1)
