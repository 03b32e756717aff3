"""The `clamwatch` command line."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from clamwatch import __version__, lazylog
from clamwatch.clamd.address import DEFAULT_CLAMD_CONF, AddressError
from clamwatch.clamd.job import TransportChoice
from clamwatch.units import parse_duration, parse_size

TYPE_CHECKING = False  # typing's own, without importing typing (see value.py)

if TYPE_CHECKING:
    from pathlib import Path
    from typing import Any, NoReturn

# Each subcommand imports its own modules when it runs: `clamwatch scan` is
# timed against clamdscan, and importing the daemon (watchdog, the actions,
# the quarantine) cost it some 40 ms per run. The configuration (tomllib and
# a few dataclasses, some 8 ms) is imported only by the subcommands that
# read it, for their options' defaults too (build_parser).

_DESCRIPTION = """\
clamwatch watches directories and scans every finished file with clamd,
keeping many scans in flight over a few long-lived clamd sessions."""

_SCAN_DESCRIPTION = """\
Scan files and directory trees with clamd, the way the clamwatch daemon does:
each file is opened once (never following a symbolic link found in a tree; a
PATH that is one is followed, as by clamscan), passed to clamd by descriptor
(FILDES) over a local Unix socket or streamed (INSTREAM) over TCP, with many
requests in flight in one IDSESSION. Access times are left as they were
(O_NOATIME) wherever the kernel allows it: on your own files, and on
everyone's as root.

Each file gets one line, as clamdscan prints them:
  PATH: OK                   clamd scanned it and found nothing
  PATH: SIGNATURE FOUND      clamd found SIGNATURE
  PATH: Not scanned: REASON ERROR
                             a symbolic link found in a tree; a fifo, socket
                             or device; too large for clamd, or answered as
                             late as its MaxScanTime; not there (missing, or
                             removed before it could be opened)
  PATH: MESSAGE ERROR        clamd reported an error, or was lost for --timeout
Names holding control characters, backslashes or bytes that are not UTF-8 are
printed with C-style escapes (\\n, \\\\, \\xff), so every line reads back
unambiguously.

The PATH - is standard input, as for clamdscan: it is read to its end into
an unnamed temporary file in $TMPDIR (else /tmp), so that it can be sent again
if the connection to clamd is lost, and its line says "stdin". A file named -
is ./-.

clamd is found from --address, else from LocalSocket or TCPSocket/TCPAddr in
--clamd-conf. A file is never reported OK unless clamd scanned all of it: a
file over clamd's StreamMaxLength is "not scanned", never truncated; so is a
file over its MaxFileSize or MaxScanSize (or grown past them while clamd had
it), which clamd would answer OK without scanning; a lost connection to clamd
is retried on a new session, never taken as a verdict."""

_SCAN_EPILOG = """\
exit status:
  0  every file was scanned and is clean
  1  at least one file is infected
  2  no file is infected, but at least one was not scanned, or clamd could
     not be reached, or the results could not be written (the scan then
     stops), or the command line is wrong
  130, 143, 129
     Ctrl-C, SIGTERM or SIGHUP stopped the scan (128 plus the signal's
     number); the lines of the files answered so far are all written

examples:
  clamwatch scan /srv/uploads
  find /srv -newer /var/lib/last-scan -type f | clamwatch scan -f /dev/stdin
  clamwatch scan --infected --json /srv/uploads > found.jsonl
  clamwatch scan --stream --address tcp://clamd.example:3310 /srv/uploads
  curl -s https://example.com/file | clamwatch scan -"""


_RUN_DESCRIPTION = """\
Watch the trees listed as [[watch]] in the configuration and scan every file
that is finished being written: closed after writing, moved into a tree, or
created and then left alone for settle_time. New directories are walked (files
often land in them before their watch exists), a kernel queue overflow walks
every tree again, and a watch root that does not exist yet is waited for.

Each verdict is logged to stderr, one line per file (or one JSON object with
--log-format json): clean, infected with its signature, not scanned, or an
error. While clamd is unreachable files wait and are retried; none is ever
reported clean without being scanned.

SIGTERM or SIGINT stops watching, lets scans in flight finish (stop_timeout),
saves what was still to do under state_directory and exits 0 (1 when it
could not be saved, a full disk); the next start scans it, and whatever
changed meanwhile (startup_scan). A state that cannot be saved while running
is logged as an error and tried again 30 s later."""

_RUN_EPILOG = """\
exit status:
  0  stopped by SIGTERM or SIGINT, and what was still to do was saved
  1  what was still to do could not be saved; the state_directory is in use
     by another clamwatch; the quarantine directory cannot be made or used
  2  the command line or the configuration is wrong (no [[watch]], say), or
     the state file cannot be read (systemd does not restart on 2)"""


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _positive_size(text: str) -> int:
    size = _size(text)
    if size < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a size of 1 byte or more")
    return size


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _positive_duration(text: str) -> float:
    duration = _duration(text)
    if duration <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a duration of more than 0")
    return duration


def _columns() -> int:
    """The terminal's width as shutil.get_terminal_size() tells it: $COLUMNS, the tty, 80."""
    try:
        columns = int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        columns = 0
    if columns <= 0 and sys.__stdout__ is not None:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns
        except (ValueError, OSError):
            columns = 0
    return columns or 80


class _Formatter(argparse.HelpFormatter):
    """argparse's help formatter, told its width.

    Left to find the width itself, it imports shutil (and shutil bz2 and
    lzma): 2.4 ms of `clamwatch scan`'s start-up, for help it rarely prints.
    """

    def __init__(
        self,
        prog: str,
        indent_increment: int = 2,
        max_help_position: int = 24,
        width: int | None = None,
    ) -> None:
        super().__init__(prog, indent_increment, max_help_position, width or _columns() - 2)


class _RawFormatter(_Formatter, argparse.RawDescriptionHelpFormatter):
    """Descriptions and epilogs printed as written (their own line breaks)."""


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose help formatter is _Formatter; subcommands' parsers too."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(**kwargs)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The command line; given ``command``, only that subcommand gets its options.

    Every subcommand is listed either way (for --help and for the error that
    names the choices); only the one that runs needs its options. The others'
    would cost `clamwatch scan` the configuration's import (their defaults)
    and some 1 ms more: argparse makes a help formatter and looks up
    translations for each option.
    """
    parser = _Parser(
        prog="clamwatch",
        description=_DESCRIPTION,
        formatter_class=_RawFormatter,
    )
    parser.add_argument("--version", action="version", version=f"clamwatch {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="log more (repeat for debug output)"
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, add in _SUBCOMMANDS.items():
        add(commands, with_options=command in (None, name))
    return parser


def _subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    """The parser of subcommand ``name`` in ``parser`` (from build_parser)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            found: argparse.ArgumentParser = action.choices[name]
            return found
    raise LookupError(name)


def _subcommand(argv: Sequence[str]) -> str | None:
    """The subcommand argparse will run: the first argument that is not an option.

    No option of ``clamwatch`` itself takes a value, so that is the word
    argparse takes as COMMAND, when it is a subcommand's name at all.
    """
    return next((arg for arg in argv if not arg.startswith("-")), None)


def _add_scan(commands: argparse._SubParsersAction[_Parser], *, with_options: bool) -> None:
    scan = commands.add_parser(
        "scan",
        help="scan files and directories once",
        description=_SCAN_DESCRIPTION,
        epilog=_SCAN_EPILOG,
        formatter_class=_RawFormatter,
    )
    if not with_options:
        return
    scan.add_argument(
        "paths",
        nargs="*",
        metavar="PATH",
        help="files or directories to scan; - for standard input",
    )
    scan.add_argument(
        "-f",
        "--file-list",
        metavar="FILE",
        help="also scan the paths listed in FILE, one per line, as clamdscan's -f does"
        " (- is then a file named -; /dev/stdin reads the list from a pipe as it"
        " comes, and while it waits the lines of the files answered are written)",
    )
    how = scan.add_mutually_exclusive_group()
    how.add_argument(
        "--fdpass",
        dest="transport",
        action="store_const",
        const=TransportChoice.FILDES,
        help="pass open descriptors (FILDES); needs a local Unix socket",
    )
    how.add_argument(
        "--stream",
        dest="transport",
        action="store_const",
        const=TransportChoice.INSTREAM,
        help="stream file contents (INSTREAM); works over TCP",
    )
    scan.set_defaults(transport=TransportChoice.AUTO)
    scan.add_argument(
        "--address",
        metavar="ADDRESS",
        help="clamd's socket: unix:///PATH or tcp://HOST:PORT (default: from --clamd-conf)",
    )
    scan.add_argument(
        "-m",
        "--multiscan",
        action="store_true",
        help="accepted for clamdscan's command lines: clamwatch always has many files in flight",
    )
    scan.add_argument(
        "-c",
        "--clamd-conf",
        "--config-file",
        default=DEFAULT_CLAMD_CONF,
        metavar="FILE",
        help="clamd.conf to read the socket, clamd's limits (StreamMaxLength, MaxFileSize,"
        " MaxScanSize, MaxScanTime, MaxQueue) and ExcludePath (what to leave out, as"
        " clamdscan does) from: read without --address, when named here, or when it"
        f" configures the clamd at --address (default: {DEFAULT_CLAMD_CONF}; -c and"
        " --config-file are clamdscan's names for it)",
    )
    scan.add_argument(
        "--max-stream-size",
        type=_size,
        metavar="SIZE",
        help="clamd's StreamMaxLength, e.g. 100M, when it cannot be read from --clamd-conf;"
        " larger files are reported as not scanned without sending them",
    )
    scan.add_argument(
        "--max-file-size",
        type=_positive_size,
        metavar="SIZE",
        help="the largest file clamd scans, when --clamd-conf does not say: clamd answers OK"
        " without scanning a file over its MaxFileSize or MaxScanSize (default: the smaller of"
        " the two, from --clamd-conf or clamd's defaults, 100M); larger files are reported as"
        " not scanned without sending them",
    )
    scan.add_argument(
        "--timeout",
        type=_duration,
        default=30.0,
        metavar="DURATION",
        help="how long clamd may stay unreachable before files are reported as errors"
        " (default: 30s); a socket this user may not connect to fails after 1s",
    )
    scan.add_argument(
        "--request-timeout",
        type=_positive_duration,
        metavar="DURATION",
        help="how long one file may take in clamd before its session is dropped and the file"
        " sent again (default: 60s above clamd's MaxScanTime from --clamd-conf, at least 180s;"
        " 1h when MaxScanTime is 0)",
    )
    scan.add_argument(
        "--no-eicar-check",
        dest="eicar_check",
        action="store_false",
        help="do not have clamd scan the EICAR test file before OK is believed (it must find"
        " it: clamd 1.4 answers OK unscanned when its TemporaryDirectory is full); for a clamd"
        " whose databases lack the EICAR signature",
    )
    scan.add_argument("--json", action="store_true", help="print one JSON object per file")
    scan.add_argument(
        "-i",
        "--infected",
        action="store_true",
        help="print no line for a clean file, only for those found infected or not scanned",
    )
    scan.add_argument(
        "--quiet",
        action="store_true",
        help="print no line for a file that is clean or infected, and no summary; the lines of"
        " files not scanned go to stderr (the exit status tells the rest)",
    )
    scan.add_argument(
        "-l",
        "--log",
        metavar="FILE",
        dest="log_file",
        help="also append every line, and the summary, to FILE (even with --quiet)",
    )
    act = scan.add_mutually_exclusive_group()
    act.add_argument(
        "--move",
        metavar="DIRECTORY",
        help="move infected files into DIRECTORY, as clamdscan does (NAME, else NAME.001 to"
        " NAME.999: nothing there is replaced); only if the path still names the very file"
        " scanned, unchanged",
    )
    act.add_argument(
        "--copy",
        metavar="DIRECTORY",
        help="copy infected files into DIRECTORY (mode 0600), from the descriptor scanned",
    )
    act.add_argument(
        "--remove",
        action="store_true",
        help="remove infected files, as clamdscan does; only if the path still names the"
        " very file scanned, unchanged. Be careful!",
    )
    scan.add_argument("--no-summary", action="store_true", help="do not print the summary")
    scan.add_argument(
        "-v",
        "--verbose",
        dest="scan_verbose",
        action="count",
        default=0,
        help="log more (as clamwatch -v)",
    )
    scan.add_argument(
        "--stdout",
        action="store_true",
        help="accepted for clamdscan's command lines: the lines always go to stdout",
    )
    scan.add_argument(
        "-w",
        "--wait",
        action="store_true",
        help="accepted for clamdscan's command lines: clamwatch waits for clamd anyway,"
        " up to --timeout",
    )
    progress = scan.add_mutually_exclusive_group()
    progress.add_argument(
        "--progress", dest="progress", action="store_true", default=None,
        help="show a progress line on stderr (default: when stderr is a terminal)",
    )  # fmt: skip
    progress.add_argument(
        "--no-progress", dest="progress", action="store_false",
        help="show none, even on a terminal",
    )  # fmt: skip


def _add_run(commands: argparse._SubParsersAction[_Parser], *, with_options: bool) -> None:
    run = commands.add_parser(
        "run",
        help="run the watch daemon in the foreground",
        description=_RUN_DESCRIPTION,
        epilog=_RUN_EPILOG,
        formatter_class=_RawFormatter,
    )
    if not with_options:
        return
    from pathlib import Path

    from clamwatch.config import DEFAULT_CONFIG

    run.add_argument(
        "--config",
        type=Path,
        default=DEFAULT_CONFIG,
        metavar="FILE",
        help=f"the configuration file (default: {DEFAULT_CONFIG})",
    )
    run.add_argument(
        "--log-target",
        choices=("auto", "journal", "stderr"),
        default="auto",
        help="where events go: the systemd journal with structured CLAMWATCH_* fields, or"
        " stderr; auto: the journal when systemd connected stderr to it (default: auto)",
    )
    run.add_argument(
        "--log-format",
        choices=("text", "json"),
        help="one line of text per event, or one JSON object per event with the fields the"
        " journal carries (default: log_format from the configuration, else text)",
    )


def _add_check_config(commands: argparse._SubParsersAction[_Parser], *, with_options: bool) -> None:
    check = commands.add_parser(
        "check-config",
        help="validate the configuration (and that clamd answers)",
        description="Read the configuration file and its drop-ins (clamwatch.d/*.toml) as"
        " `clamwatch run` would, and report every problem with the file, the key, the bad"
        " value and what was expected. With --clamd, also connect to clamd and report what"
        " it offers. A [[watch]] path whose rules change files, a release_to, the"
        " quarantine or the state folder on a read-only file system is a warning on"
        " stderr that names the folder, its setting and what will fail there; under"
        " the service (ExecReload=) these are the mounts its sandbox gives it.",
        epilog="exit status: 0 the configuration is valid (and clamd answered), read-only"
        " folders included: a reload cannot make them writable (ReadWritePaths= takes a"
        " restart), so it is not refused for them; 1 it is not valid (or clamd did not"
        " answer); 2 the command line is wrong",
    )
    if not with_options:
        return
    from pathlib import Path

    from clamwatch.config import DEFAULT_CONFIG

    check.add_argument(
        "--config",
        type=Path,
        default=DEFAULT_CONFIG,
        metavar="FILE",
        help=f"the configuration file (default: {DEFAULT_CONFIG})",
    )
    check.add_argument("--clamd", action="store_true", help="also check that clamd answers")


def _add_demo(commands: argparse._SubParsersAction[_Parser], *, with_options: bool) -> None:
    demo = commands.add_parser(
        "demo",
        help="run the daemon with a private clamd on a demo upload folder",
        description="Start a private clamd with the bundled test signature and run the"
        " clamwatch daemon on a demo upload folder. Once it is watching, demo uploads"
        " arrive (clean files and one EICAR test file) and their verdicts are logged;"
        " drop more files in yourself. Ctrl-C stops the daemon, then clamd.",
    )
    if not with_options:
        return
    from pathlib import Path

    demo.add_argument(
        "--workdir",
        type=Path,
        default=Path("/tmp/clamwatch-demo"),
        help="where the private clamd, the state and the demo uploads live"
        " (default: /tmp/clamwatch-demo)",
    )
    demo.add_argument(
        "--for",
        dest="duration",
        type=_duration,
        metavar="DURATION",
        help="stop after this long (default: run until Ctrl-C)",
    )


_QUARANTINE_DESCRIPTION = """\
Look after the quarantine: list, show, restore, delete and purge the files
clamwatch moved or copied there.

Each entry is the file's content (mode 0600, in a directory of mode 0700) and
a JSON record of where it came from (the exact bytes of the name, also when
they are not UTF-8), its owner, group, mode, size, mtime and sha256, the
signature clamd found, clamd's version and when it was found. Entry ids look
like 20261125T095900Z-3f9a1c2b: the UTC time of detection and a random part.

The quarantine directory is --directory, else [quarantine] directory in the
configuration file (--config), else /var/lib/clamwatch/quarantine when no
configuration file exists."""

_QUARANTINE_EPILOG = """\
exit status:
  0  done
  1  no such entry, or the operation was refused (the message says why)
  2  the command line or the configuration is wrong

examples:
  clamwatch quarantine list
  clamwatch quarantine show 20261125T095900Z-3f9a1c2b
  clamwatch quarantine restore 20261125T095900Z-3f9a1c2b --to /root/inspect/
  clamwatch quarantine purge --older-than 30d"""


def _duration_text(text: str) -> str:
    _duration(text)  # checked here so that a bad duration is a usage error
    return text


def _add_where(parser: argparse.ArgumentParser) -> None:
    """--config and --directory, accepted before or after the action.

    SUPPRESS leaves a value given before the action alone (argparse copies
    only what the action's parser set).
    """
    from pathlib import Path

    from clamwatch.config import DEFAULT_CONFIG

    parser.add_argument(
        "--config",
        type=Path,
        default=argparse.SUPPRESS,
        metavar="FILE",
        help="the configuration file whose [quarantine] directory to use"
        f" (default: {DEFAULT_CONFIG})",
    )
    parser.add_argument(
        "--directory",
        type=Path,
        default=argparse.SUPPRESS,
        metavar="DIR",
        help="the quarantine directory, instead of the configured one",
    )


def _add_quarantine(commands: argparse._SubParsersAction[_Parser], *, with_options: bool) -> None:
    quarantine = commands.add_parser(
        "quarantine",
        help="list, show, restore, delete or purge quarantined files",
        description=_QUARANTINE_DESCRIPTION,
        epilog=_QUARANTINE_EPILOG,
        formatter_class=_RawFormatter,
    )
    if not with_options:
        return
    _add_where(quarantine)
    actions = quarantine.add_subparsers(dest="quarantine_command", metavar="ACTION", required=True)

    listing = actions.add_parser(
        "list",
        help="list the entries, oldest first",
        description="List the entries, oldest first: id, detection time, size, signature and"
        " original path (escaped like `clamwatch scan` prints names).",
    )
    _add_where(listing)
    listing.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object per entry: the record's fields, original_path_b64 holding"
        " the name's exact bytes, and data_path",
    )
    show = actions.add_parser(
        "show", help="show one entry", description="Show everything the"
        " record of one entry holds, and where its content is kept.",
    )  # fmt: skip
    _add_where(show)
    show.add_argument("id", metavar="ID", help="the entry's id, as `list` prints it")
    show.add_argument("--json", action="store_true", help="print the record as a JSON object")

    restore = actions.add_parser(
        "restore",
        help="put a file back and delete its entry",
        description="Write the entry's content back where it came from (or to --to) with its"
        " owner, group, mode and modification time, then delete the entry. The file appears"
        " whole (written beside it and renamed into place) and an existing file is never"
        " replaced unless --force is given. A file restored into a watched tree is scanned"
        " again, and quarantined again if it is still found infected.",
    )
    _add_where(restore)
    restore.add_argument("id", metavar="ID", help="the entry's id")
    restore.add_argument(
        "--to",
        metavar="PATH",
        help="where to write it instead; an existing directory receives it under its original name",
    )
    restore.add_argument("--force", action="store_true", help="replace an existing file")

    delete = actions.add_parser(
        "delete", help="delete one entry for good",
        description="Delete an entry's content and record.",
    )  # fmt: skip
    _add_where(delete)
    delete.add_argument("id", metavar="ID", help="the entry's id")

    purge = actions.add_parser(
        "purge",
        help="delete the entries older than a given age",
        description="Delete every entry detected longer ago than --older-than. The daemon"
        " does the same by itself with [quarantine] max_age and max_total_size.",
    )
    _add_where(purge)
    purge.add_argument(
        "--older-than",
        required=True,
        type=_duration_text,
        metavar="DURATION",
        help="an age such as 30d, 12h or 90m",
    )


_SUBCOMMANDS = {
    "scan": _add_scan,
    "run": _add_run,
    "check-config": _add_check_config,
    "demo": _add_demo,
    "quarantine": _add_quarantine,
}


def _scan_action(args: argparse.Namespace) -> tuple[str, str | None] | None:
    """--move DIR, --copy DIR or --remove (one at most: argparse sees to it)."""
    if args.move is not None:
        return "move", args.move
    if args.copy is not None:
        return "copy", args.copy
    return ("remove", None) if args.remove else None


def entry() -> NoReturn:
    """The ``clamwatch`` command (and ``python -m clamwatch``)."""
    _stand_in_for_closed_streams()
    sys.exit(main(exit_when_scanned=True))


def _stand_in_for_closed_streams() -> None:
    """Put /dev/null, open for writing only, in place of a closed descriptor 0, 1 or 2.

    Started with one of them closed (`clamwatch scan x >&-`), the process
    would give its number to the next file it opens: a socket to clamd or a
    file being scanned would become standard input or output. And Python
    leaves sys.stdout (or sys.stderr) None then, which the scan took for
    "print nothing" and then failed on. Standing in, /dev/null takes what is
    written (as a closed descriptor lets clamdscan go on), and a read of a
    closed standard input (`clamwatch scan - <&-`) still fails, with EBADF:
    that is no empty file, to be called clean.
    """
    closed = []
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            closed.append(fd)
    for fd in closed:
        null = os.open(os.devnull, os.O_WRONLY)
        if null != fd:
            os.dup2(null, fd)
            os.close(null)
    if 1 in closed:
        sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115 (the process's stdout)
    if 2 in closed:
        sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115
    elif 1 in closed:
        sys.stderr.write("clamwatch: standard output is closed: its lines go to /dev/null\n")


_LOG_FORMAT = "clamwatch: %(message)s"  # until `run` sets up the daemon's own logging


def main(argv: Sequence[str] | None = None, *, exit_when_scanned: bool = False) -> int:
    """Run the command line ``argv``; return its exit status.

    ``exit_when_scanned``: ``scan`` ends the process itself (see _exit_now).
    """
    if argv is None:
        argv = sys.argv[1:]
    parser = build_parser(_subcommand(argv))
    args, unknown = parser.parse_known_args(argv)
    # errors in a subcommand's arguments, with that subcommand's usage
    if unknown:
        _subparser(parser, args.command).error(f"unrecognized arguments: {' '.join(unknown)}")
    if args.command == "scan" and not args.paths and args.file_list is None:
        _subparser(parser, "scan").error("give at least one PATH, or --file-list")
    verbose = args.verbose + getattr(args, "scan_verbose", 0)
    level = [lazylog.WARNING, lazylog.INFO, lazylog.DEBUG][min(verbose, 2)]
    if args.command == "scan":
        # set up at scan's first message, if any (see lazylog.py)
        lazylog.configure(level, _LOG_FORMAT)
        from clamwatch.scan_command import ScanOptions, run_scan

        status = run_scan(
            ScanOptions(
                paths=args.paths,
                file_list=args.file_list,
                address=args.address,
                clamd_conf=args.clamd_conf,
                transport=args.transport,
                json_lines=args.json,
                infected_only=args.infected,
                quiet=args.quiet,
                log_file=args.log_file,
                summary=not args.no_summary,
                progress=args.progress,
                max_stream_size=args.max_stream_size,
                max_file_size=args.max_file_size,
                connect_timeout=args.timeout,
                request_timeout=args.request_timeout,
                eicar_check=args.eicar_check,
                action=_scan_action(args),
            )
        )
        if exit_when_scanned:
            _exit_now(status)
        return status
    import logging

    logging.basicConfig(level=level, format=_LOG_FORMAT)
    if args.command == "run":
        return run_daemon(args.config, args.log_format, args.log_target)
    if args.command == "check-config":
        from clamwatch.check_config import run_check

        return run_check(args.config, check_clamd=args.clamd)
    if args.command == "quarantine":
        from clamwatch.quarantine_command import run_quarantine

        return run_quarantine(args)
    from clamwatch.demo import run_demo

    return run_demo(args.workdir, args.duration)


def _exit_now(status: int) -> NoReturn:
    """End the process without Python's teardown of every module and object.

    That teardown took 7-10 ms of the 58 ms an empty `clamwatch scan` takes
    here (measured), paid on every run by a hook that scans each upload as it
    lands. Only ``scan`` ends this way: the one thread it may start (reading
    a file list) has ended, and what it opened is closed, when run_scan
    returns. What Python's exit would still do is done here: logging's
    handlers and both streams are flushed, and a flush that fails makes a
    clean run's status 2, as run_scan makes it when the results cannot be
    written.
    """
    lazylog.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            status = status or 2
    os._exit(status)


def run_daemon(config_path: Path, log_format: str | None, log_target: str) -> int:
    from clamwatch.config import ConfigError, load_config
    from clamwatch.daemon import Daemon, setup_logging
    from clamwatch.quarantine import QuarantineError
    from clamwatch.state import BadStateFileError, StateError

    try:
        config = load_config(config_path)
    except ConfigError as exc:
        sys.stderr.write(f"clamwatch: {exc}\n")
        return 2
    if not config.watches:
        sys.stderr.write(f"clamwatch: {config_path}: no [[watch]] is configured\n")
        return 2
    setup_logging(log_format or config.daemon.log_format, log_target)
    try:
        daemon = Daemon(config)
    except (AddressError, ValueError) as exc:
        sys.stderr.write(f"clamwatch: {exc}\n")
        return 2
    except QuarantineError as exc:  # the folder cannot be made or used: not the config's fault
        sys.stderr.write(f"clamwatch: {exc}\n")
        return 1
    try:
        return daemon.run()
    except StateError as exc:
        sys.stderr.write(f"clamwatch: {exc}\n")
        # a state file it cannot read: 2, which systemd does not restart on
        # (RestartPreventExitStatus=2), as it would every 5 s to no end
        return 2 if isinstance(exc, BadStateFileError) else 1


if __name__ == "__main__":
    sys.exit(main())
