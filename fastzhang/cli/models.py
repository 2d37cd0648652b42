"""`fastzhang models` (placeholder until its issue lands)."""


def add_parser(sub) -> None:
    p = sub.add_parser("models", help="(not yet available)")
    p.set_defaults(func=lambda args: print("fastzhang models: not yet available") or 1)
