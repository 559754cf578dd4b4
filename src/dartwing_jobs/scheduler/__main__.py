"""``python -m dartwing_jobs.scheduler``: the scheduler loop as a process (the
CLI's ``dartwing-jobs scheduler`` runs the same ``run_scheduler``)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from ..engine import Engine
from .loop import Scheduler, SchedulerOptions


def run_scheduler(engine: Engine, options: SchedulerOptions | None = None, *,
                  install_signal_handlers: bool = True) -> int:
    scheduler = Scheduler(engine, options)
    if install_signal_handlers:
        scheduler.install_signal_handlers()
    scheduler.run()
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dependency-interval", type=float, default=0.5,
                        help="seconds between dependency sweeps (default 0.5)")
    parser.add_argument("--periodic-interval", type=float, default=0.25,
                        help="seconds between looks at cron schedules (default 0.25)")
    parser.add_argument("--rescue-interval", type=float, default=None,
                        help="seconds between lease rescues (default lease/3, at least 1)")
    parser.add_argument("--no-cleanup", action="store_true",
                        help="do not run the daily retention cleanup from this scheduler")


def options_from(args: argparse.Namespace) -> SchedulerOptions:
    for name in ("dependency_interval", "periodic_interval", "rescue_interval"):
        value = getattr(args, name)
        if value is not None and not value > 0:
            raise SystemExit(f"error: validation_error: --{name.replace('_', '-')} "
                             "must be positive")
    return SchedulerOptions(
        dependency_interval=args.dependency_interval,
        periodic_interval=args.periodic_interval,
        rescue_interval=args.rescue_interval,
        run_cleanup=not args.no_cleanup,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dartwing-jobs scheduler")
    parser.add_argument("--database-url", default=None)
    add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    engine = Engine(args.database_url) if args.database_url else Engine()
    try:
        return run_scheduler(engine, options_from(args))
    finally:
        engine.close()


if __name__ == "__main__":
    sys.exit(main())
