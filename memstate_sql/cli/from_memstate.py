"""`import-memstate`: copy a memstate 0.5.1 database into the store (the work: `memstate_sql.memstate_import`)."""

from __future__ import annotations

import click

from memstate_sql.cli.base import command
from memstate_sql.cli.context import Target, display, driver_problem, parse_url, probe, settings, sqlite_file
from memstate_sql.cli.errors import USAGE, CliError
from memstate_sql.cli.output import emit_json, progress_bar
from memstate_sql.cli.transfer import check_batch_size


@command("import-memstate", "copy a memstate 0.5.1 database (SQLite file or PostgreSQL tables) into the store")
@click.option(
    "--from",
    "source_arg",
    required=True,
    metavar="URL",
    help="memstate's database: a SQLite file path or URL, or a PostgreSQL URL",
)
@click.option("--from-prefix", default="memstate", show_default=True, help="memstate's table prefix on PostgreSQL")
@click.option("--batch-size", type=int, default=1000, show_default=True, help="rows per batch")
@click.option("--no-progress", is_flag=True, help="no progress bar on stderr")
def import_memstate_cmd(source_arg: str, from_prefix: str, batch_size: int, no_progress: bool) -> int:
    """Copy the facts and the log of a memstate 0.5.1 database into the store, keeping ids and order,
    in one transaction. Re-running it adds only what is new (facts that changed are updated)."""
    from sqlalchemy import create_engine

    from memstate_sql import memstate_import

    check_batch_size(batch_size)
    source_url = parse_url(source_arg)
    target = Target.current()
    source_file = sqlite_file(source_url)
    if source_file is not None and not source_file.exists():
        raise CliError(f"no memstate database file at {source_file}", USAGE)
    try:
        source = create_engine(source_url)
    except ImportError as error:
        raise driver_problem(error, source_url) from None
    try:
        probe(source, source_url)
        layout = memstate_import.detect(source, from_prefix)
        if display(source_url) == target.shown and target.schema is None:
            ours = {f"{target.prefix}_facts", f"{target.prefix}_tx"}
            if layout.table_names & ours:
                raise CliError(
                    f"the source's tables and the target's share names ({', '.join(sorted(ours))}); "
                    "pass another --prefix",
                    USAGE,
                )
        with (
            target.open(create=True, max_attempts=3) as storage,
            progress_bar("importing", disabled=no_progress) as bar,
        ):
            counts = memstate_import.import_memstate(storage, source, layout, batch_size=batch_size, progress=bar)
    finally:
        source.dispose()
    data = {"source": display(source_url), "layout": layout.name, **counts.as_dict()}
    if settings().json:
        emit_json(data)
    else:
        print(f"imported from {data['source']} ({layout.name}) into {target.shown}:")
        print(
            f"  facts: {counts.facts_added} added, {counts.facts_updated} updated, {counts.facts_unchanged} unchanged"
        )
        print(f"  log entries: {counts.log_added} added, {counts.log_skipped} already present")
    return 0
