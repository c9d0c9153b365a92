"""``pacs bench``: corpus, ingest, query, retrieve, compare; registered by :func:`add_parsers`.

It is a client: it talks DICOM (and DICOMweb) to any archive and never
opens ours. Results print as a table and, with ``--json OUT``, are written
in the schema of :mod:`engine.bench.report`.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from rich.filesize import decimal

from engine.bench import report
from engine.bench.target import DEFAULT_CALLING_AE, Target

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def add_parsers(subparsers: Any) -> None:
    """Add ``bench`` and its sub-commands to the ``pacs`` parser."""
    bench = subparsers.add_parser(
        "bench", help="benchmark any PACS: corpus, ingest, query, retrieve, compare"
    )
    sub = bench.add_subparsers(dest="bench_command", required=True)

    s = sub.add_parser("corpus", help="write a deterministic corpus of Part 10 files")
    s.add_argument("dir")
    s.add_argument("--seed", type=int, default=1)
    s.add_argument("--studies", type=int, default=2)
    s.add_argument(
        "--modality", type=str.upper, default="CT", choices=["CT", "MR", "CR", "DX", "MIXED"]
    )
    s.add_argument("--slices", type=int, default=200, help="instances per CT/MR series")
    s.add_argument("--multiframe", action="store_true", help="one multi-frame instance a series")
    s.add_argument(
        "--syntax",
        default="explicit",
        choices=["explicit", "implicit", "rle", "jpeg-ls", "jpeg2000", "jpeg-baseline"],
    )
    s.add_argument("--small", action="store_true", help="16x16 instances, for scale runs")
    s.add_argument("--jobs", type=int, help="writer processes (default: one per core)")
    s.set_defaults(fn=cmd_corpus)

    s = sub.add_parser("ingest", help="send a corpus over N associations")
    _target_args(s, http=False)
    s.add_argument("dir")
    s.add_argument("--associations", type=int, default=4)
    s.add_argument("--sender", default="auto", choices=["auto", "storescu", "internal"])
    _span_arg(s)
    s.set_defaults(fn=cmd_ingest)

    s = sub.add_parser("query", help="a fixed mix of C-FIND (and QIDO-RS) queries")
    _target_args(s)
    s.add_argument("--repeat", type=int, default=20, help="times the whole mix runs")
    s.add_argument("--corpus", help="corpus folder whose manifest gives the query values")
    _span_arg(s)
    s.set_defaults(fn=cmd_query)

    s = sub.add_parser("retrieve", help="C-GET, C-MOVE and WADO-RS of whole series")
    _target_args(s)
    s.add_argument("--corpus", help="corpus folder whose manifest lists the series")
    _span_arg(s)
    s.add_argument("--series", type=int, help="retrieve at most this many series")
    s.add_argument("--move-dest", help="AE title the target knows at --move-port (C-MOVE)")
    s.add_argument("--move-port", type=int, default=11113, help="port of the local receiver")
    s.add_argument("--no-get", action="store_true", help="skip C-GET")
    s.add_argument("--dcmtk", action="store_true",
                   help="also C-GET with DCMTK getscu and C-MOVE with movescu, a process a series")
    s.add_argument("--only", choices=["get", "move", "wado", "getscu", "movescu"],
                   help="run this one alone (to measure the server's CPU per operation)")
    s.set_defaults(fn=cmd_retrieve)

    s = sub.add_parser("compare", help="two result files side by side, with ratios")
    s.add_argument("a")
    s.add_argument("b")
    s.set_defaults(fn=cmd_compare)


def _span_arg(s: argparse.ArgumentParser) -> None:
    s.add_argument(
        "--files",
        metavar="START:END",
        help="only the manifest's files START to END-1, and the studies whole in them "
        "(scale runs: ingest 0:10000, query, ingest 10000:100000, query with 0:100000...)",
    )


def _target_args(s: argparse.ArgumentParser, http: bool = True) -> None:
    s.add_argument("--target", required=True, help="AET@HOST:PORT of the archive")
    s.add_argument(
        "--calling", default=DEFAULT_CALLING_AE, help="our AE title (default: %(default)s)"
    )
    if http:
        s.add_argument("--http", help="its DICOMweb root URL, for QIDO-RS / WADO-RS")
    s.add_argument("--json", help="write the result here")


def _finish(
    mode: str,
    args: argparse.Namespace,
    target: Target,
    metrics: dict[str, Any],
    details: dict[str, Any],
) -> int:
    data = report.result(mode, target.as_json(), metrics, details, getattr(args, "argv", None))
    report.print_result(data)
    report.write_json(data, args.json)
    failures = sum(m["value"] for k, m in metrics.items() if k.endswith("failures"))
    for line in details.get("failures", [])[:5]:
        report.err.print(f"[red]failure:[/] {line}")
    return EXIT_FAILED if failures else EXIT_OK


def cmd_corpus(args: argparse.Namespace) -> int:
    from engine.bench.corpus import CorpusSpec, write_corpus

    spec = CorpusSpec(
        seed=args.seed,
        studies=args.studies,
        modality=args.modality,
        slices=args.slices,
        multiframe=args.multiframe,
        syntax=args.syntax,
        small=args.small,
    )
    with report.progress() as progress:
        task = progress.add_task("corpus", total=None)
        m = write_corpus(
            Path(args.dir),
            spec,
            jobs=args.jobs,
            progress=lambda n, total: progress.update(task, completed=n, total=total),
        )
    report.out.print(
        f"wrote {m['instances']:,} instances ({decimal(m['bytes'])}): {m['patients']} patients, "
        f"{m['studies']} studies, {m['series']} series, {args.modality} {args.syntax}; "
        f"manifest {Path(args.dir) / 'manifest.json'}"
    )
    return EXIT_OK


def _manifest(folder: str | None, span: str | None = None) -> dict[str, Any] | None:
    from engine.bench.corpus import load_manifest, parse_span, subset

    if not folder:
        if span:
            raise ValueError("--files needs the corpus's manifest: give --corpus DIR")
        return None
    manifest = load_manifest(Path(folder))
    return subset(manifest, *parse_span(span)) if span else manifest


def cmd_ingest(args: argparse.Namespace) -> int:
    from engine.bench.ingest import ingest

    target = Target.parse(args.target, calling=args.calling)
    root = Path(args.dir)
    has_manifest = (root / "manifest.json").is_file()
    manifest = _manifest(args.dir, args.files) if has_manifest or args.files else None
    with report.progress() as progress:
        metrics, details = ingest(
            target,
            root,
            manifest,
            associations=args.associations,
            sender=args.sender,
            progress=progress,
        )
    return _finish("ingest", args, target, metrics, details)


def _discover(target: Target) -> list[Any]:
    """Query values from the archive itself (a broad STUDY query, then SERIES queries)."""
    from engine import dimse
    from engine.bench import query

    with dimse.Association.open(target, query.find_contexts()) as assoc:
        return query.discover(assoc)


def cmd_query(args: argparse.Namespace) -> int:
    from engine.bench import query

    target = Target.parse(args.target, args.http, args.calling)
    manifest = _manifest(args.corpus, args.files)
    if manifest is not None and not manifest["study_list"]:
        raise ValueError(f"no study lies whole in --files {args.files}: widen the span")
    values = query.values_from_manifest(manifest) if manifest else _discover(target)
    metrics: dict[str, Any] = {}
    failures: list[str] = []
    with report.progress() as progress:
        task = progress.add_task("C-FIND", total=args.repeat * len(query.QUERY_TYPES))
        timings = query.run_dimse(target, values, args.repeat, lambda n: progress.advance(task, n))
        metrics |= query.figures("find", timings)
        failures += [f for t in timings.values() for f in t.failures]
        if target.http:
            task = progress.add_task("QIDO-RS", total=args.repeat * (len(query.QUERY_TYPES) - 1))
            timings = query.run_qido(
                target.http, values, args.repeat, lambda n: progress.advance(task, n)
            )
            metrics |= query.figures("qido", timings)
            failures += [f for t in timings.values() for f in t.failures]
    details = {
        "repeat": args.repeat,
        "studies_used": len(values),
        "values_from": "manifest" if manifest else "broad query",
        "failures": failures[:20],
    }
    return _finish("query", args, target, metrics, details)


def cmd_retrieve(args: argparse.Namespace) -> int:
    from engine.bench import retrieve

    target = Target.parse(args.target, args.http, args.calling)
    manifest = _manifest(args.corpus, args.files)
    if manifest is not None:
        refs = retrieve.series_from_manifest(manifest)
    else:
        refs = [retrieve.SeriesRef(v.study_uid, v.series_uid) for v in _discover(target)]
    refs = refs[: args.series] if args.series else refs
    metrics: dict[str, Any] = {}
    failures: list[str] = []
    with report.progress() as progress:
        runs: list[tuple[str, Any]] = []
        if not args.no_get:
            runs.append(("get", lambda adv: retrieve.run_get(target, refs, adv)))
        if args.move_dest:
            runs.append(("move", lambda adv: _move(target, refs, args, adv, retrieve.run_move)))
        if args.dcmtk or args.only in ("getscu", "movescu"):
            if not args.no_get:
                runs.append(("getscu", lambda adv: retrieve.run_getscu(target, refs, adv)))
            if args.move_dest:
                runs.append(("movescu", lambda adv: _move(target, refs, args, adv,
                                                          retrieve.run_movescu)))  # fmt: skip
        if target.http:
            http = target.http
            runs.append(("wado", lambda adv: retrieve.run_wado(http, refs, adv)))
        runs = [(name, run) for name, run in runs if args.only in (None, name)]
        if not runs:
            report.out.print(f"[red]--only {args.only}: the target cannot do it "
                             "(no --move-dest, no --http, or --no-get)[/red]")
            return EXIT_USAGE
        for name, run in runs:
            task = progress.add_task(name, total=len(refs))
            samples = run(lambda n, t=task: progress.advance(t, n))
            metrics |= retrieve.figures(name, samples)
            failures += samples.failures
    details = {"series": len(refs), "move_dest": args.move_dest, "failures": failures[:20]}
    return _finish("retrieve", args, target, metrics, details)


def _move(target: Target, refs: list[Any], args: argparse.Namespace, advance: Any,
          run: Any) -> Any:  # fmt: skip
    from engine.bench import retrieve

    receiver = retrieve.Receiver(args.move_dest, args.move_port)
    try:
        return run(target, refs, args.move_dest, receiver, advance)
    finally:
        receiver.close()


def cmd_compare(args: argparse.Namespace) -> int:
    report.out.print(report.compare(report.load(args.a), report.load(args.b)))
    return EXIT_OK
