"""`fastzhang status` (placeholder until its issue lands)."""


def add_parser(sub) -> None:
    p = sub.add_parser("status", help="(not yet available)")
    p.set_defaults(func=lambda args: print("fastzhang status: not yet available") or 1)
