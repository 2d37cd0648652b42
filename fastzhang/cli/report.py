"""`fastzhang report` (placeholder until its issue lands)."""


def add_parser(sub) -> None:
    p = sub.add_parser("report", help="(not yet available)")
    p.set_defaults(func=lambda args: print("fastzhang report: not yet available") or 1)
