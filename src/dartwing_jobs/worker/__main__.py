"""``python -m dartwing_jobs.worker``: the worker supervisor as a process (the
CLI's ``dartwing-jobs worker`` runs the same ``run_worker``)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from ..engine import Engine
from .supervisor import Supervisor, WorkerOptions


def run_worker(engine: Engine, options: WorkerOptions) -> int:
    supervisor = Supervisor(engine, options)
    supervisor.install_signal_handlers()
    supervisor.run()
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--concurrency", type=int, default=None,
                        help="child processes (default: number of CPUs)")
    parser.add_argument("--queues", nargs="*", default=None, metavar="JOB_TYPE",
                        help="only run jobs of these job types")
    parser.add_argument("--shutdown-grace", type=float, default=30.0,
                        help="seconds running attempts get to finish on SIGTERM")


def options_from(args: argparse.Namespace) -> WorkerOptions:
    options = WorkerOptions(job_types=args.queues or None, shutdown_grace=args.shutdown_grace)
    if args.concurrency is not None:
        if args.concurrency < 1:
            raise SystemExit("error: validation_error: --concurrency must be at least 1")
        options.concurrency = args.concurrency
    return options


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dartwing-jobs worker")
    parser.add_argument("--database-url", default=None)
    add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    engine = Engine(args.database_url) if args.database_url else Engine()
    return run_worker(engine, options_from(args))


if __name__ == "__main__":
    sys.exit(main())
