"""`fastzhang clean` (placeholder until its issue lands)."""


def add_parser(sub) -> None:
    p = sub.add_parser("clean", help="(not yet available)")
    p.set_defaults(func=lambda args: print("fastzhang clean: not yet available") or 1)
