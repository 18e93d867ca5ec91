"""`python -m bench NAME [args…]` runs bench/NAME.py's `main(args)`; `all` runs the CPU suite."""

from __future__ import annotations

import importlib
import logging
import sys

log = logging.getLogger(__name__)

CPU_SUITE = ["encode", "queue", "loop_lag", "burst", "overhead", "batch"]


def main(argv: list[str]) -> int:
    if not argv or argv[0] in {"-h", "--help"}:
        names = ", ".join([*CPU_SUITE, "gpu", "fuzz", "scaleout", "fleet"])
        sys.stderr.write(f"usage: python -m bench NAME [args] | all\n  names: {names}\n")
        return 2
    logging.basicConfig(level=logging.WARNING)
    names = CPU_SUITE if argv[0] == "all" else [argv[0]]
    rc = 0
    for name in names:
        try:
            module = importlib.import_module(f"bench.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"bench.{name}":
                raise
            sys.stderr.write(f"no benchmark named {name!r}\n")
            rc = 2
            continue
        result = module.main(argv[1:] if argv[0] != "all" else [])
        if result is False:
            rc = 1
    return rc


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
