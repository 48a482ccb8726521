"""Command line: ``python -m distcomm info``, ``bench``, ``trace`` and ``run``.

Its commands are tested where they live: tests/cli/test_info.py, tests/cli/test_bench.py, tests/cli/test_trace.py, tests/launch/test_agent.py.
"""

from __future__ import annotations

import argparse
import json
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m distcomm", description="distcomm command line tools")
    commands = parser.add_subparsers(dest="command", required=True)
    info = commands.add_parser("info", help="report the environment: versions, backends, devices, launcher")
    info.add_argument("--json", action="store_true", help="print the report as JSON")
    commands.add_parser("bench", help="time collectives against raw torch.distributed (bench --help)", add_help=False)
    commands.add_parser("trace", help="read the ranks' flight records and say who is stuck where (trace --help)", add_help=False)
    commands.add_parser("run", help="start a job's workers as torchrun does, keeping the survivors when one dies (run --help)", add_help=False)
    args, rest = parser.parse_known_args(argv)
    if args.command == "run":
        from distcomm.cli.run import main as run

        return run(rest)
    if args.command == "bench":
        from distcomm.cli.bench import main as bench

        return bench(rest)
    if args.command == "trace":
        from distcomm.cli.trace import main as trace

        return trace(rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.command == "info":
        from distcomm.cli.info import collect, render

        report = collect()
        print(json.dumps(report, indent=2) if args.json else render(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
