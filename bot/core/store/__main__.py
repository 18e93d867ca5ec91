"""`python -m bot.store migrate FROM_URL TO_URL [--merge]`: move the bot's data between stores.

Run it with the bot stopped. URLs are `STORE_URL`s (`sqlite:///data/bot.db`, `mongodb://host/db`);
a Mongo URL without a database takes `MONGODB_DB` (and the write concern `MONGODB_WRITE_CONCERN`)
from the environment or `.env`, as the bot would. Prints a progress bar per collection on a
terminal and the records copied per collection at the end; exits 0 on success, 1 when a store
cannot be reached, 2 when the arguments or the target are refused.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from urllib.parse import urlsplit, urlunsplit

from pydantic import ValidationError

from bot.core.store import create_store
from bot.core.store.base import COLLECTIONS, StoreUnavailable
from bot.core.store.migrate import CopyReport, TargetNotEmpty, copy_store

log = logging.getLogger(__name__)


def shown(url: str) -> str:
    """The URL with any password replaced, for output that may be pasted into a bug report."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bot.store", description="Manage the bot's store.")
    commands = parser.add_subparsers(dest="command", required=True)
    migrate = commands.add_parser(
        "migrate",
        help="copy everything from one store to another (SQLite <-> MongoDB)",
        description="Copy jobs, the request log, users, bans, quotas, guild settings, the audit "
        "trail and meta from FROM_URL to TO_URL. Stop the bot first.",
    )
    migrate.add_argument("from_url", metavar="FROM_URL", help="the store to copy from (a STORE_URL)")
    migrate.add_argument("to_url", metavar="TO_URL", help="the store to copy into (a STORE_URL)")
    migrate.add_argument(
        "--merge",
        action="store_true",
        help="copy into a store that already holds records (same ids are replaced by the source's)",
    )
    migrate.add_argument("--batch-size", type=int, default=500, help="records per write (default 500)")
    bar = migrate.add_mutually_exclusive_group()
    bar.add_argument(
        "--progress", dest="progress", action="store_true", default=None, help="always draw bars"
    )
    bar.add_argument("--no-progress", dest="progress", action="store_false", help="never draw bars")
    return parser


class Bars:
    """One tqdm bar per collection, on stderr, so stdout keeps only the summary."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._bars: dict[str, object] = {}

    def __call__(self, name: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        from tqdm import tqdm

        bar = self._bars.get(name)
        if bar is None:
            bar = self._bars[name] = tqdm(total=total, desc=f"{name:<14}", unit=" rec", file=sys.stderr)
        bar.update(done - bar.n)  # type: ignore[attr-defined]
        if done >= total:
            bar.close()  # type: ignore[attr-defined]


def summary(report: CopyReport, from_url: str, to_url: str) -> str:
    lines = [f"copied {shown(from_url)} -> {shown(to_url)} in {report.seconds:.1f} s"]
    lines.append(f"  {'collection':<16}{'copied':>10}{'in target':>12}")
    for name in COLLECTIONS:
        lines.append(f"  {name:<16}{report.copied[name]:>10}{report.target_counts[name]:>12}")
    lines.append(f"  schema: source v{report.source_schema}, target v{report.target_schema}")
    return "\n".join(lines)


async def migrate(args: argparse.Namespace) -> int:
    from bot.settings import Settings

    if args.from_url.strip() == args.to_url.strip():
        print("FROM_URL and TO_URL are the same store: nothing to copy.", file=sys.stderr)
        return 2
    if args.batch_size < 1:
        print("--batch-size must be at least 1.", file=sys.stderr)
        return 2
    try:
        settings = Settings()
        source = create_store(settings.model_copy(update={"store_url": args.from_url}))
        target = create_store(settings.model_copy(update={"store_url": args.to_url}))
    except (ValueError, ValidationError) as exc:
        print(f"Cannot use these stores: {exc}", file=sys.stderr)
        return 2
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    try:
        async with source, target:
            report = await copy_store(
                source, target, merge=args.merge, batch_size=args.batch_size, progress=Bars(progress)
            )
    except TargetNotEmpty as exc:
        print(exc.message, file=sys.stderr)
        return 2
    except StoreUnavailable as exc:
        print(f"A store cannot be reached: {exc.message}", file=sys.stderr)
        return 1
    print(summary(report, args.from_url, args.to_url))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return asyncio.run(migrate(args))


if __name__ == "__main__":
    sys.exit(main())
