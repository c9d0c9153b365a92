"""The ``pacs`` command: ingest, find, export, delete, verify, compact, reindex, stats
(``queue`` and ``send``: :mod:`engine.forward.cli`; ``bench``: :mod:`engine.bench.cli`).

Exit codes scripts can rely on:
0 success; 1 the archive reported a problem (verify found corruption, an I/O
error); 2 usage error (bad arguments, unknown UID or query key); 3 partial
success (ingest rejected some files).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
from rich.console import Console
from rich.filesize import decimal
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from engine.errors import EngineError, InvalidInstanceError, InvalidQueryError, NotFoundError

if TYPE_CHECKING:
    from engine.archive import Archive

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_PARTIAL = 0, 1, 2, 3
DEFAULT_ARCHIVE = "pacs-archive"

out = Console()
err = Console(stderr=True)


def _open(args: argparse.Namespace) -> Archive:
    from engine.archive import open_archive

    settings: dict[str, Any] = {}
    if getattr(args, "no_fsync", False):
        settings["durability"] = "none"
    return open_archive(args.archive, args.config, **settings)


def _walk(paths: Sequence[str]) -> Iterator[Path]:
    for p in paths:
        path = Path(p)
        if path.is_dir():
            for root, dirs, files in os.walk(path):
                dirs.sort()
                for name in sorted(files):
                    yield Path(root) / name
        else:
            yield path


# -- commands -------------------------------------------------------------------


def cmd_ingest(args: argparse.Namespace) -> int:
    files = list(_walk(args.paths))
    missing = [f for f in files if not f.is_file()]
    if missing:
        err.print(f"[red]error:[/] no such file: {missing[0]}")
        return EXIT_USAGE
    stored = duplicates = 0
    nbytes = 0
    rejected: dict[str, list[str]] = {}
    t0 = time.perf_counter()
    from engine import audit

    _audit_locally(args)
    user = _local_user()
    with _open(args) as archive, _progress() as progress:
        task = progress.add_task("ingest", total=len(files))

        def one(path: Path) -> tuple[Path, Any]:
            try:
                result = archive.store(path)
            except InvalidInstanceError as exc:  # its traceback's frames hold the file's bytes
                return path, exc.with_traceback(None)
            audit.emit(audit.Event.INSTANCES_TRANSFERRED, user=user, address=None,
                       study=result.study_instance_uid, source=str(path),
                       sop_instance_uid=result.sop_instance_uid)  # fmt: skip
            return path, result

        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            for path, result in pool.map(one, files):
                progress.advance(task)
                if isinstance(result, Exception):
                    rejected.setdefault(_reason(result), []).append(str(path))
                    continue
                stored += 1
                duplicates += result.duplicate
                nbytes += path.stat().st_size
    seconds = time.perf_counter() - t0
    mb_s = nbytes / 1e6 / seconds if seconds else 0.0
    out.print(
        f"stored {stored} instances ({duplicates} duplicates replaced), "
        f"rejected {sum(map(len, rejected.values()))}, {decimal(nbytes)} in {seconds:.2f} s "
        f"({mb_s:.1f} MB/s, {stored / seconds if seconds else 0:.0f} instances/s)"
    )
    for reason, paths in sorted(rejected.items(), key=lambda kv: -len(kv[1])):
        shown = ", ".join(paths[:3]) + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")
        out.print(f"  rejected {len(paths)}: {reason}: {shown}")
    return EXIT_PARTIAL if rejected else EXIT_OK


def _reason(exc: Exception) -> str:
    text = str(exc)
    # group "malformed DICOM at byte 1234: ..." by its reason, not its offset
    if "malformed DICOM at byte" in text:
        text = "malformed DICOM: " + text.split(": ", 1)[-1]
    return f"{type(exc).__name__}: {text}"


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeRemainingColumn(), console=err, transient=False,
    )  # fmt: skip


def _segments(progress: Progress, what: str) -> Any:
    """A maintenance progress callback that drives a bar of segments."""
    task = progress.add_task(f"{what} (segments)", total=None)

    def update(done: int, total: int) -> None:
        progress.update(task, completed=done, total=total)

    return update


def _parse_keys(pairs: Sequence[str]) -> dict[str, str]:
    query: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep and not key:
            raise InvalidQueryError(f"bad query term {pair!r}: write KEYWORD=VALUE or KEYWORD")
        query[key.strip()] = value
    return query


def cmd_find(args: argparse.Namespace) -> int:
    from engine import audit

    query = _parse_keys(args.keys)
    _audit_locally(args)
    with _open(args) as archive:
        audit.emit(audit.Event.QUERY, user=_local_user(), address=None,
                   patient=query.get("PatientID") or None,
                   study=query.get("StudyInstanceUID") or None, level=args.level,
                   keys=query)  # fmt: skip
        rows = [
            {elem.keyword: _json_value(elem.value) for elem in ds}
            for ds in archive.find(args.level, query, limit=args.limit, offset=args.offset)
        ]
    if args.json:
        sys.stdout.buffer.write(orjson.dumps(rows, option=orjson.OPT_INDENT_2) + b"\n")
        return EXIT_OK
    columns = list(dict.fromkeys(k for row in rows for k in row))
    table = Table(*columns, title=f"{len(rows)} {args.level.lower()} matches")
    for row in rows:
        table.add_row(*(str(row.get(c, "")) for c in columns))
    out.print(table)
    return EXIT_OK


def _json_value(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return [_json_value(v) for v in value]
    if isinstance(value, int | float):
        return value
    return str(value)


def _audit_locally(args: argparse.Namespace) -> None:
    """The audit trail of a command run on the archive itself (ingest, find, export, delete)."""
    from engine import audit
    from engine.config import load_config

    table = load_config(args.config).extra.get("audit")
    settings = audit.audit_settings(table, audit.DEFAULT_FILE_NAME)
    if settings.file:
        settings = audit.AuditSettings(os.path.join(args.archive, settings.file), settings.syslog)
    audit.configure(settings)


def _local_user() -> str:
    import getpass

    return getpass.getuser()


def cmd_export(args: argparse.Namespace) -> int:
    from engine import audit
    from engine.forward.manual import resolve
    from engine.ingest import validate_uid

    dest = Path(args.dest)
    _audit_locally(args)
    with _open(args) as archive:
        uids = resolve(archive, args.uid)
        if not uids:
            err.print(f"[red]error:[/] no patient, study, series or instance {args.uid!r}")
            return EXIT_USAGE
        for uid in uids:  # a file name only from a valid UID, whatever the index says
            validate_uid("SOPInstanceUID", uid)
        audit.emit(audit.Event.DATA_EXPORT, user=_local_user(), address=None,
                   description=f"to {dest.resolve()}", selector=args.uid,
                   instances=len(uids))  # fmt: skip
        single_file = len(uids) == 1 and dest.suffix.lower() == ".dcm"
        if not single_file:
            dest.mkdir(parents=True, exist_ok=True)
        nbytes = 0
        with _progress() as progress:
            task = progress.add_task("export", total=len(uids))
            for uid in uids:
                data = archive.get(uid)
                # the UID was validated on store (digits and dots): safe as a file name
                target = dest if single_file else dest / f"{uid}.dcm"
                target.write_bytes(data)
                nbytes += len(data)
                progress.advance(task)
    out.print(f"exported {len(uids)} instances ({decimal(nbytes)}) to {dest}")
    return EXIT_OK


def cmd_delete(args: argparse.Namespace) -> int:
    which = {
        "patient_id": args.patient, "study_instance_uid": args.study,
        "series_instance_uid": args.series, "sop_instance_uid": args.instance,
    }  # fmt: skip
    given = {k: v for k, v in which.items() if v is not None}
    if len(given) != 1:
        err.print("[red]error:[/] name exactly one of --patient, --study, --series, --instance")
        return EXIT_USAGE
    from engine import audit

    _audit_locally(args)
    with _open(args) as archive:
        count = archive.delete(**given)
    audit.emit(audit.Event.INSTANCES_DELETED, user=_local_user(), address=None,
               patient=given.get("patient_id"), study=given.get("study_instance_uid"),
               instances=count, **given)  # fmt: skip
    if count == 0:
        err.print(f"nothing to delete: no instance under {next(iter(given.values()))}")
        return EXIT_USAGE
    out.print(
        f"deleted {count} instances (tombstones written; run `pacs compact` to reclaim space)"
    )
    return EXIT_OK


def cmd_verify(args: argparse.Namespace) -> int:
    with _open(args) as archive, _progress() as progress:
        report = archive.verify(_segments(progress, "verify"))
    for problem in report.problems:
        out.print(f"[red]problem:[/] {problem}")
    verdict = "clean" if report.ok else f"{len(report.problems)} problems"
    out.print(f"verified {report.records} records, {report.instances} indexed instances: {verdict}")
    return EXIT_OK if report.ok else EXIT_FAILED


def cmd_compact(args: argparse.Namespace) -> int:
    with _open(args) as archive, _progress() as progress:
        r = archive.compact(progress=_segments(progress, "compact"))
    saved = r.bytes_before - r.bytes_after
    out.print(
        f"compacted {r.segments} segments: {r.records_kept} records kept, "
        f"{decimal(r.bytes_before)} -> {decimal(r.bytes_after)} ({decimal(saved)} freed)"
    )
    return EXIT_OK


def cmd_reindex(args: argparse.Namespace) -> int:
    with _open(args) as archive, _progress() as progress:
        r = archive.reindex(_segments(progress, "reindex"))
    for c in r.corruptions:
        out.print(f"[red]corruption:[/] {c}")
    out.print(f"reindexed {r.records} records from {r.segments} segments: {r.instances} instances")
    return EXIT_FAILED if r.corruptions else EXIT_OK


def cmd_stats(args: argparse.Namespace) -> int:
    from engine.forward.cli import queue_table
    from engine.forward.status import forward_states, queue_rows
    from engine.replica.cli import replica_status, status_table

    with _open(args) as archive:
        s = archive.stats()
        replica = replica_status(archive)
        try:
            forward = forward_states(archive)  # the [[forward]] rules of --config, if any
        except ValueError as exc:
            err.print(f"[red]error:[/] the config's forward rules: {exc}")
            return EXIT_USAGE
    if args.json:
        doc: dict[str, Any] = {**s, "forward": queue_rows(forward)} if forward else s
        if replica is not None:
            doc = {**doc, "replica": replica}
        sys.stdout.buffer.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n")
        return EXIT_OK
    table = Table("", "", title=f"archive {args.archive}", show_header=False)
    for key, value in s.items():
        table.add_row(key.replace("_", " "), f"{value:,}")
    out.print(table)
    if replica is not None:
        out.print(status_table(replica))
    if forward:
        out.print(queue_table(forward))
    return EXIT_OK


def cmd_hash_password(args: argparse.Namespace) -> int:
    import getpass

    from engine.credentials import hash_password

    if sys.stdin.isatty():
        password = getpass.getpass("password: ")
        if getpass.getpass("again: ") != password:
            err.print("[red]error:[/] the passwords differ")
            return EXIT_USAGE
    else:  # piped: the first line (never a command-line argument: ps would show it)
        password = sys.stdin.readline().rstrip("\n")
    if not password:
        err.print("[red]error:[/] empty password")
        return EXIT_USAGE
    print(hash_password(password))
    return EXIT_OK


def cmd_serve(args: argparse.Namespace) -> int:
    from engine.config import load_config
    from engine.net.server import serve
    from engine.net.settings import server_settings

    logging.getLogger("engine.net").setLevel(logging.INFO)  # say where it listens, what it refuses
    config = load_config(args.config)
    if args.replica_of:
        table = {**config.extra.get("replica", {}), "primary": args.replica_of}
        config = config.updated(extra={**config.extra, "replica": table})
    settings = server_settings(
        config, ae_title=args.ae_title, dicom_port=args.dicom_port, host=args.host,
        workers=args.workers, max_associations=args.max_associations, http_port=args.http_port,
        tls_cert=args.tls_cert, tls_key=args.tls_key, tls_ca=args.tls_ca,
    )  # fmt: skip
    return serve(args.data_dir or args.archive, config, settings)


# -- entry point ----------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pacs", description="pacs-engine: a DICOM archive")
    p.add_argument("-A", "--archive", default=os.environ.get("PACS_ARCHIVE", DEFAULT_ARCHIVE),
                   help="archive folder (default: $PACS_ARCHIVE or ./pacs-archive)")  # fmt: skip
    p.add_argument("--config", help="TOML config file")
    p.add_argument("-v", "--verbose", action="store_true", help="log what the engine does")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("ingest", help="store files and folders (recursive)")
    s.add_argument("paths", nargs="+")
    s.add_argument(
        "-j", "--jobs", type=int, default=4, help="concurrent stores (they share fsyncs)"
    )
    s.add_argument("--no-fsync", action="store_true", help="durability=none: for throw-away runs")
    s.set_defaults(fn=cmd_ingest)

    s = sub.add_parser("find", help="query at PATIENT, STUDY, SERIES or IMAGE level")
    s.add_argument(
        "level", type=str.upper, choices=["PATIENT", "STUDY", "SERIES", "IMAGE", "INSTANCE"]
    )
    s.add_argument("keys", nargs="*", help="KEYWORD=VALUE to match, KEYWORD alone to return it")
    s.add_argument("--limit", type=int)
    s.add_argument("--offset", type=int, default=0)
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=cmd_find)

    s = sub.add_parser("export", help="write the instances of a patient/study/series/instance")
    s.add_argument("uid", help="SOP Instance, Series or Study Instance UID, or a PatientID")
    s.add_argument("dest", help="folder, or a .dcm file for one instance")
    s.set_defaults(fn=cmd_export)

    s = sub.add_parser("delete", help="delete a patient, study, series or instance")
    for flag in ("patient", "study", "series", "instance"):
        s.add_argument(f"--{flag}")
    s.set_defaults(fn=cmd_delete)

    for name, fn, text in (
        ("verify", cmd_verify, "re-read every record and check checksums and index"),
        ("compact", cmd_compact, "rewrite sealed segments without dead records, recompressed"),
        ("reindex", cmd_reindex, "rebuild the index from the segments"),
    ):
        sub.add_parser(name, help=text).set_defaults(fn=fn)
    s = sub.add_parser("serve", help="run the DICOM server (C-ECHO/STORE/FIND/GET/MOVE)")
    s.add_argument("data_dir", nargs="?", help="archive folder (default: -A / $PACS_ARCHIVE)")
    s.add_argument("--ae-title", help="our AE title (default: PACS)")
    s.add_argument("--dicom-port", type=int, help="DICOM port (default: 11112)")
    s.add_argument("--host", help="address to listen on (default: 127.0.0.1)")
    s.add_argument("--http-port", type=int, help="DICOMweb port (default: 8042; 0: off)")
    s.add_argument("--workers", type=int, help="worker processes (default: one per core)")
    s.add_argument("--max-associations", type=int, help="concurrent associations per worker")
    s.add_argument("--tls-cert", help="PEM certificate: the DICOM port speaks TLS, HTTP is HTTPS")
    s.add_argument("--tls-key", help="PEM private key of --tls-cert")
    s.add_argument("--tls-ca", help="PEM CA that signs client certificates (then required)")
    s.add_argument("--replica-of", metavar="URL",
                   help="follow the primary at this http(s) URL (user:password@ if it asks), "
                        "read-only, until `pacs promote`")  # fmt: skip
    s.add_argument("--config", dest="config", default=argparse.SUPPRESS, help="TOML config file")
    s.set_defaults(fn=cmd_serve)

    s = sub.add_parser("hash-password", help="hash a password for [auth.users.NAME] password")
    s.set_defaults(fn=cmd_hash_password)

    s = sub.add_parser("stats", help="counts and sizes")
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=cmd_stats)

    from engine.backup_cli import add_parsers as add_backup_parsers
    from engine.bench.cli import add_parsers as add_bench_parsers  # a client: needs no Archive
    from engine.forward.cli import add_parsers as add_forward_parsers
    from engine.replica.cli import add_parsers as add_replica_parsers

    add_backup_parsers(sub)
    add_forward_parsers(sub)
    add_replica_parsers(sub)
    add_bench_parsers(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # `pacs bench` records its command
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")  # fmt: skip
    try:
        code: int = args.fn(args)
    except (InvalidQueryError, NotFoundError, ValueError) as exc:
        err.print(f"[red]error:[/] {exc}")
        return EXIT_USAGE
    except EngineError as exc:
        err.print(f"[red]error:[/] {type(exc).__name__}: {exc}")
        return EXIT_FAILED
    except OSError as exc:
        err.print(f"[red]error:[/] {exc}")
        return EXIT_FAILED
    return code


if __name__ == "__main__":
    sys.exit(main())
