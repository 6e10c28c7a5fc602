"""``cordsnet-cli fetch``: download a checkpoint into the cache, verified by its hash (:mod:`cordsnet.fetch`)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from ._shared import JsonOpt, console, echo_json


def fetch_command(
    source: Annotated[Optional[str], typer.Argument(
        help="A registered name (see --list; cordsnet-r8 is the paper's published checkpoint) or an http(s) URL "
             "given with --git-blob or --sha256.")] = None,
    git_blob: Annotated[Optional[str], typer.Option(
        "--git-blob", help="With a URL: the file's git blob id (40 hex digits, as `git ls-tree` shows it).")] = None,
    sha256: Annotated[Optional[str], typer.Option(
        "--sha256", help="With a URL: the file's sha256 (64 hex digits).")] = None,
    list_: Annotated[bool, typer.Option("--list", help="List the registered names, their hashes and whether "
                                                         "they are cached; download nothing.")] = False,
    timeout: Annotated[Optional[float], typer.Option(
        "--timeout", help="Seconds to wait for the connection and for each read (default "
                          "$CORDSNET_FETCH_TIMEOUT or 30).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Download a checkpoint into the cache ($CORDSNET_CACHE_DIR) once, check its hash, print its path."""
    from .. import fetch

    if list_:
        if source is not None or git_blob is not None or sha256 is not None:
            raise ValueError("--list: takes no source or hash")
        rows = fetch.remote_table()
        if as_json:
            echo_json({"remotes": rows})
            return
        from rich.table import Table

        table = Table("name", "hash", "cached", "description")
        for row in rows:
            table.add_row(row["name"], f"{row['kind']} {row['digest']}", row["path"] if row["cached"] else "no",
                          row["description"])
        console().print(table)
        return
    if source is None:
        raise ValueError(f"source: expected a registered name ({', '.join(fetch.REMOTES)}) or a URL with "
                         "--git-blob/--sha256 (or --list)")
    path = fetch.fetch(source, git_blob=git_blob, sha256=sha256, timeout=timeout)
    if as_json:
        echo_json({"source": source, "path": str(path)})
        return
    typer.echo(str(path))
