"""``sleepstream data fetch`` and ``sleepstream data check``."""

from __future__ import annotations

import argparse

from sleepstream.commands import DATA_HELP, Subparsers
from sleepstream.paths import check_output_dir


def add_parser(commands: Subparsers) -> argparse.ArgumentParser:
    data = commands.add_parser("data", help="download or inspect the sleep-accel data")
    data_commands = data.add_subparsers(dest="data_command", required=True)
    p = data_commands.add_parser("fetch", help="download the PhysioNet record, verified")
    p.add_argument("--dest", help="target folder (default: $SLEEPSTREAM_DATA or user cache)")
    p.add_argument("--base-url", help="mirror of the PhysioNet record (with SHA256SUMS.txt)")
    p.add_argument(
        "--only", nargs="+", metavar="FOLDER", help="only these folders, e.g. labels heart_rate"
    )
    p.set_defaults(run=fetch)
    p = data_commands.add_parser("check", help="per subject: files, time spans and gaps")
    p.add_argument("folder", nargs="?", help=DATA_HELP)
    p.set_defaults(run=check)
    return data


def fetch(a: argparse.Namespace) -> int:
    from sleepstream.data.download import default_data_dir, fetch

    dest = check_output_dir(a.dest or default_data_dir(), "--dest folder")
    include = [f"{name.rstrip('/')}/" for name in a.only] if a.only else None
    done = fetch(dest, a.base_url, include=include, progress=not a.quiet)
    print(
        f"{dest}: {len(done.downloaded)} files downloaded ({done.bytes / 1e6:.1f} MB), "
        f"{len(done.skipped)} already present and verified"
    )
    return 0


def check(a: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.markup import escape

    from sleepstream.data.check import check_folder, check_table
    from sleepstream.data.folder import data_folder

    result, out = check_folder(data_folder(a.folder)), Console()
    out.print(check_table(result))
    for problem in result.problems:
        out.print(f"[red]{escape(problem)}", highlight=False, soft_wrap=True)
    return 0 if result.ok else 1
