"""``vcheck`` command line. ``run`` hands over to pytest.main with the plugin's options, so
``vcheck run x.yaml`` and ``pytest x.yaml`` collect the same items.

Exit codes are pytest's: 0 passed, 1 a check failed or was inconclusive, 2 interrupted,
3 internal error, 4 usage error (bad policy or option), 5 nothing collected.
"""
from __future__ import annotations

import argparse
import sys
from importlib import resources
from pathlib import Path
from typing import Sequence

from .catalog import Catalog
from .errors import EXIT_USAGE, PolicyError
from .policy import load_policy
from .units import UNIT_LABEL

DEFAULT_PACK = "node-conformance.yaml"


def bundled_policy(name: str = DEFAULT_PACK) -> Path:
    return Path(str(resources.files("vcheck.policies").joinpath(name)))


def _policies(args: argparse.Namespace) -> list[str]:
    return list(args.policies) or [str(bundled_policy())]


def _validate_all(paths: Sequence[str], catalog: Catalog, quiet: bool = True) -> int:
    """Load every policy; print each error as one line on stderr. Returns an exit code."""
    status = 0
    for p in paths:
        if not Path(p).is_file():
            print(f"{p}: no such policy file", file=sys.stderr)
            status = EXIT_USAGE
            continue
        try:
            pol = load_policy(p, catalog)
        except PolicyError as exc:
            print(str(exc), file=sys.stderr)
            status = EXIT_USAGE
            continue
        if not quiet:
            print(f"{p}: ok, policy {pol.name} with {len(pol.checks)} checks")
    return status


def _pytest_args(args: argparse.Namespace) -> list[str]:
    # xunit1 keeps file/line on <testcase> so CI can point at the policy line; system-out
    # carries the evidence of passing checks (failures carry it in <failure>)
    out = list(_policies(args)) + ["-p", "no:cacheprovider", "-rfEs", "-o", "junit_family=xunit1",
                                   "-o", "junit_logging=system-out"]
    if getattr(args, "junitxml", None):
        out.append(f"--junitxml={args.junitxml}")
    if getattr(args, "json", None):
        out.append(f"--json={args.json}")
    if getattr(args, "k", None):
        out += ["-k", args.k]
    if getattr(args, "m", None):
        out += ["-m", args.m]
    if getattr(args, "window", None):
        out.append(f"--window={args.window}")
    if getattr(args, "verbose", 0):
        out.append("-" + "v" * args.verbose)
    return out + list(getattr(args, "pytest_args", []) or [])


def cmd_run(args: argparse.Namespace) -> int:
    import pytest

    status = _validate_all(_policies(args), Catalog())
    if status:
        return status
    return int(pytest.main(_pytest_args(args)))


def cmd_validate(args: argparse.Namespace) -> int:
    return _validate_all(_policies(args), Catalog(), quiet=False)


def cmd_list(args: argparse.Namespace) -> int:
    import pytest

    status = _validate_all(_policies(args), Catalog())
    if status:
        return status
    return int(pytest.main(list(_policies(args)) + ["-p", "no:cacheprovider", "--collect-only", "-q"]))


def cmd_metrics(args: argparse.Namespace) -> int:
    cat = Catalog()
    rows = [("METRIC", "LAYER", "UNIT", "PER", "SOURCE", "DESCRIPTION")]
    for name in sorted(cat.metrics):
        m = cat.metrics[name]
        unit = UNIT_LABEL.get(m.dimension, m.dimension) or "count"
        rows.append((name, m.layer, unit, ",".join(m.labels) or "node", m.source, m.description))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r[:5], widths)) + "  " + r[5])
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    """Exit 0 when everything applicable can be observed, 1 when something cannot."""
    import json

    from .doctor import diagnose, render
    from .procfs import HostRoots

    rows = diagnose(HostRoots.from_env())
    if args.json:
        print(json.dumps([r.__dict__ for r in rows], indent=2))
    else:
        print(render(rows))
    return 1 if any(r.status == "no" for r in rows) else 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vcheck", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="sample the node once and judge the policies")
    run.add_argument("policies", nargs="*", help=f"policy files (default: the bundled {DEFAULT_PACK})")
    run.add_argument("--junitxml", metavar="FILE", help="write JUnit XML here")
    run.add_argument("--json", metavar="FILE", help="write the JSON report (observations included) here")
    run.add_argument("-k", metavar="EXPR", help="only checks whose id matches (pytest -k)")
    run.add_argument("-m", metavar="LAYER", help="only checks of this layer: guest, hypervisor, container")
    run.add_argument("--window", metavar="DURATION", help="observe for this long instead of each policy's window")
    run.add_argument("-v", "--verbose", action="count", default=0)
    run.add_argument("pytest_args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    run.set_defaults(func=cmd_run)

    val = sub.add_parser("validate", help="load and compile policies only")
    val.add_argument("policies", nargs="*")
    val.set_defaults(func=cmd_validate)

    lst = sub.add_parser("list", help="the items a run would judge")
    lst.add_argument("policies", nargs="*")
    lst.set_defaults(func=cmd_list)

    met = sub.add_parser("metrics", help="the metric catalogue")
    met.set_defaults(func=cmd_metrics)

    doc = sub.add_parser("doctor", help="what this node can observe, and why not where it cannot")
    doc.add_argument("--json", action="store_true", help="machine-readable rows")
    doc.set_defaults(func=cmd_doctor)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        print("vcheck: interrupted", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `vcheck doctor | head`: the reader left, nothing to report
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
