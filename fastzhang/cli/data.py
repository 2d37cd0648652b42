"""`fastzhang data` (placeholder until its issue lands)."""


def add_parser(sub) -> None:
    p = sub.add_parser("data", help="(not yet available)")
    p.set_defaults(func=lambda args: print("fastzhang data: not yet available") or 1)
