"""`fastzhang run` (placeholder until its issue lands)."""


def add_parser(sub) -> None:
    p = sub.add_parser("run", help="(not yet available)")
    p.set_defaults(func=lambda args: print("fastzhang run: not yet available") or 1)
