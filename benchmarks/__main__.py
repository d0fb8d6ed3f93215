"""``python -m benchmarks`` (``make bench``): every section of the benchmark, results in
``$PIPELINE_HOME/bench/results.json``. Kept out of the ``pipelines`` package: the product never imports it, and the
model service's Bento never packs it."""

from __future__ import annotations

import argparse
import logging
import sys
from contextlib import nullcontext
from datetime import date
from pathlib import Path

from benchmarks.console import quiet_console, say
from pipelines.cli import configure_logging
from pipelines.ops.stack import apply_profile

log = logging.getLogger("benchmarks")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    parser.add_argument("--start", type=date.fromisoformat, help="ingestion section: first day (default 2013-01-01)")
    parser.add_argument("--end", type=date.fromisoformat, help="ingestion section: last day (default 2013-12-31)")
    parser.add_argument("--env-file", type=Path, help="a profile's environment file, as for python -m pipelines")
    parser.add_argument("-v", "--verbose", action="store_true", help="library logs and tracebacks too")
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
    apply_profile(args.env_file)  # before any settings are read
    from benchmarks.run import run_benchmarks
    from pipelines.core.settings import get_settings

    log_file = get_settings().pipeline_home / "bench" / "bench.log"
    if not args.verbose:
        say(f"make bench: tables here; library output and logs in {log_file} (--verbose: all of it here)")
    try:
        with nullcontext() if args.verbose else quiet_console(log_file):
            run_benchmarks(args.start, args.end)
    except Exception as error:
        log.exception("bench failed")
        say(f"bench failed: {type(error).__name__}: {error}" + ("" if args.verbose else f" (details: {log_file})"))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
