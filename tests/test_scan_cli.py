"""`clamwatch scan` as an admin runs it: a real process against the real clamd."""

from __future__ import annotations

import base64
import io
import json
import os
import pty
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from clamwatch.clamd.engine import Engine
from clamwatch.privateclamd import PrivateClamd
from clamwatch.scan_command import ScanOptions, run_scan
from clamwatch.testsig import EICAR_SIGNATURE
from fakeclamd import FakeClamd, Faults
from helpers import (
    ClamdFactory,
    age_access_time,
    deny_root,
    fill_inodes,
    wait_for,
    without_dac_override,
)


def clamwatch(
    *args: str,
    timeout: float = 120,
    input: str | None = None,
    cwd: Path | None = None,
    wrap: Callable[[list[str]], list[str]] = list,
) -> subprocess.CompletedProcess[str]:
    """Run `clamwatch ARGS...`; standard input is ``input``, else empty.

    ``wrap`` turns the command into the one run (without_dac_override).
    """
    return subprocess.run(
        wrap([sys.executable, "-m", "clamwatch", *args]),
        capture_output=True,
        text=True,
        errors="surrogateescape",
        input=input,
        stdin=subprocess.DEVNULL if input is None else None,
        cwd=cwd,
        timeout=timeout,
        check=False,
    )


def lines(output: str) -> dict[str, str]:
    """``path: status`` lines before the summary, keyed by path."""
    result: dict[str, str] = {}
    for line in output.split("\n"):
        if line.startswith("---") or not line:
            break
        path, _, status = line.partition(": ")  # no test path holds ": "
        result[path] = status
    return result


@pytest.fixture
def uploads(tmp_path: Path, eicar: bytes) -> Path:
    root = tmp_path / "uploads"
    (root / "sub").mkdir(parents=True)
    (root / "clean.txt").write_text("clean\n")
    (root / "sub" / "virus.com").write_bytes(eicar)
    return root


def test_infected_tree_prints_each_file_and_exits_1(clamd: PrivateClamd, uploads: Path) -> None:
    result = clamwatch("scan", "--address", clamd.unix_address, str(uploads))
    assert result.returncode == 1, result.stderr
    assert lines(result.stdout) == {
        f"{uploads}/clean.txt": "OK",
        f"{uploads}/sub/virus.com": f"{EICAR_SIGNATURE} FOUND",
    }
    assert "Scanned files: 2\nInfected files: 1\nNot scanned: 0\nErrors: 0\n" in result.stdout


@pytest.mark.parametrize("flag", ["--fdpass", "--stream"])
def test_clean_tree_exits_0(clamd: PrivateClamd, tmp_path: Path, flag: str) -> None:
    (tmp_path / "a").write_text("a")
    (tmp_path / "b").write_text("b")
    result = clamwatch("scan", flag, "--no-summary", "--address", clamd.unix_address, str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert lines(result.stdout) == {f"{tmp_path}/a": "OK", f"{tmp_path}/b": "OK"}
    assert "SCAN SUMMARY" not in result.stdout
    # nothing went wrong, so nothing on stderr (a session closed during its
    # handshake once said "clamd ... is unreachable" here)
    assert result.stderr == ""


def test_a_failure_inside_the_engine_is_exit_2_never_a_verdict(
    clamd: PrivateClamd, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The engine's loop runs on the command's thread: a bug in it must not
    # end the command with Python's status 1 ("found"), nor leave files
    # without their line, nor call any of them clean. 600 files: the engine
    # must read replies before the 513th is opened (scan_command._WINDOW),
    # so the failure comes in the middle of the walk, and the files the walk
    # had yet to reach need their lines too.
    for number in range(600):
        (tmp_path / f"f{number:03d}").write_text(f"clean {number}")
    real = Engine._scan_reply
    calls = 0

    def failing(engine: Engine, *args: Any) -> None:
        nonlocal calls
        calls += 1
        if calls == 5:
            raise RuntimeError("injected engine bug")
        real(engine, *args)

    monkeypatch.setattr(Engine, "_scan_reply", failing)
    out, err = io.StringIO(), io.StringIO()
    # no EICAR check: every _scan_reply is then a file's
    options = ScanOptions(
        [str(tmp_path)], address=clamd.unix_address, summary=False, eicar_check=False
    )
    assert run_scan(options, out, err) == 2
    assert "internal error: RuntimeError('injected engine bug')" in err.getvalue()
    found = lines(out.getvalue())
    assert set(found) == {f"{tmp_path}/f{number:03d}" for number in range(600)}
    clean = [path for path, status in found.items() if status == "OK"]
    assert len(clean) == 4, "only the replies read before the failure are verdicts"
    assert all(
        status.startswith("the clamd engine failed: ") and status.endswith(" ERROR")
        for status in found.values()
        if status != "OK"
    )


def test_tcp_address_streams(clamd: PrivateClamd, uploads: Path) -> None:
    result = clamwatch("scan", "--json", "--address", clamd.tcp_address, str(uploads))
    assert result.returncode == 1
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert {r["transport"] for r in records} == {"instream"}
    assert "Infected files: 1" in result.stderr  # the summary goes to stderr with --json


@pytest.mark.parametrize("transport", ["fildes", "instream"])
def test_a_scan_leaves_access_times_alone(
    clamd: PrivateClamd, uploads: Path, transport: str
) -> None:
    """clamd's reads (FILDES) and the scan's own (INSTREAM) go through an O_NOATIME descriptor,
    and so does the walk's listing of each directory (tmpwatch goes by directories'
    access times too)."""
    files = [uploads / "clean.txt", uploads / "sub" / "virus.com"]
    directories = [uploads / "sub", uploads]  # the folder's own last: aging sub changes it
    atimes = {path: age_access_time(path) for path in files + directories}
    address = clamd.unix_address if transport == "fildes" else clamd.tcp_address
    result = clamwatch("scan", "--json", "--address", address, str(uploads))
    assert result.returncode == 1, result.stderr
    records = {r["path"]: r for r in map(json.loads, result.stdout.splitlines())}
    assert {r["transport"] for r in records.values()} == {transport}
    assert records[str(files[1])]["verdict"] == "infected"
    assert {path: os.stat(path).st_atime_ns for path in atimes} == atimes
    # an ordinary read of the same files, or listing of the folders, does update them here
    for path in files:
        path.read_bytes()
    for path in directories:
        os.listdir(path)
    for path, atime in atimes.items():
        assert os.stat(path).st_atime_ns != atime, path


def test_fdpass_over_tcp_is_refused(clamd: PrivateClamd, uploads: Path) -> None:
    result = clamwatch("scan", "--fdpass", "--address", clamd.tcp_address, str(uploads))
    assert result.returncode == 2
    assert "FILDES needs a Unix socket" in result.stderr
    assert result.stdout == ""


def test_symlink_fifo_and_missing_are_not_scanned_exit_2(
    clamd: PrivateClamd, tmp_path: Path
) -> None:
    (tmp_path / "real").write_text("real")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    os.mkfifo(tmp_path / "fifo")
    missing = tmp_path / "missing"
    result = clamwatch("scan", "--address", clamd.unix_address, str(tmp_path), str(missing))
    assert result.returncode == 2
    assert lines(result.stdout) == {
        f"{tmp_path}/fifo": "Not scanned: a fifo, not a regular file ERROR",
        f"{tmp_path}/link": "Not scanned: symbolic link not followed ERROR",
        f"{tmp_path}/real": "OK",
        str(missing): "Not scanned: no such file or directory ERROR",
    }
    assert "Not scanned: 3" in result.stdout


def test_a_file_named_with_a_slash_after_it_is_scanned_as_clamdscan_does(
    clamd: PrivateClamd, tmp_path: Path, eicar: bytes
) -> None:
    """ "bad.com/" is refused by the kernel (ENOTDIR); clamdscan scans bad.com."""
    (tmp_path / "bad.com").write_bytes(eicar)
    (tmp_path / "notes.txt").write_text("notes")
    named = [f"{tmp_path}/bad.com/", f"{tmp_path}/notes.txt//", f"{tmp_path}/notes.txt/inner"]
    result = clamwatch("scan", "--address", clamd.unix_address, "--no-summary", *named)
    assert lines(result.stdout) == {
        f"{tmp_path}/bad.com": f"{EICAR_SIGNATURE} FOUND",
        f"{tmp_path}/notes.txt": "OK",
        f"{tmp_path}/notes.txt/inner": "Not scanned: no such file or directory: a name on its"
        " path is a file, not a folder ERROR",
    }
    assert result.returncode == 1  # found, and an error: 1 wins, as in clamdscan


def test_links_named_on_the_command_line_are_followed(
    clamd: PrivateClamd, uploads: Path, tmp_path: Path
) -> None:
    """`clamwatch scan /var/www`, /var/www a link to /srv/www: scanned under the
    name given, as clamscan does by default; links inside the tree still are
    not. (clamdscan 1.4 prints such a link "OK" without scanning it.)"""
    (uploads / "inner-link").symlink_to(uploads / "clean.txt")
    (tmp_path / "www").symlink_to(uploads, target_is_directory=True)
    (tmp_path / "one").symlink_to(uploads / "sub" / "virus.com")
    named = [str(tmp_path / "www"), str(tmp_path / "one")]
    result = clamwatch("scan", "--address", clamd.unix_address, *named)
    assert result.returncode == 1, result.stderr
    assert lines(result.stdout) == {
        f"{tmp_path}/www/clean.txt": "OK",
        f"{tmp_path}/www/inner-link": "Not scanned: symbolic link not followed ERROR",
        f"{tmp_path}/www/sub/virus.com": f"{EICAR_SIGNATURE} FOUND",
        f"{tmp_path}/one": f"{EICAR_SIGNATURE} FOUND",
    }


def test_a_link_into_a_folder_that_may_only_be_searched_is_scanned(
    clamd: PrivateClamd, tmp_path: Path, eicar: bytes
) -> None:
    """A home folder of mode 0711: `cat link` reads the file, and so does the
    scan, which opened the target's folder for reading before (EACCES)."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "upload.com").write_bytes(eicar)
    os.chown(home, 65534, 65534)  # not root's: root without CAP_DAC_* may only search it
    home.chmod(0o711)
    (tmp_path / "link").symlink_to(home / "upload.com")
    result = clamwatch(
        "scan", "--no-summary", "--stream", "--address", clamd.tcp_address, str(tmp_path / "link"),
        wrap=without_dac_override,
    )  # fmt: skip
    assert (result.returncode, result.stdout) == (1, f"{tmp_path}/link: {EICAR_SIGNATURE} FOUND\n")


def test_a_clamd_that_cannot_scan_gets_no_file_called_ok(
    clamd_factory: Callable[..., PrivateClamd],
    tmpfs: Callable[..., None],
    uploads: Path,
    tmp_path: Path,
) -> None:
    """clamd 1.4 with its TemporaryDirectory full answers OK, unscanned, to
    FILDES (and clamdscan prints it); the EICAR check at the start of each
    session catches it."""
    where = tmp_path / "clamd-tmp"
    tmpfs(where, "8M", inodes=256)
    server = clamd_factory(max_threads=1, extra={"TemporaryDirectory": str(where)})
    fill_inodes(where)
    command = ["scan", "--fdpass", "--address", server.unix_address, "--no-summary"]
    unchecked = clamwatch(*command, "--no-eicar-check", str(uploads))
    assert lines(unchecked.stdout)[f"{uploads}/sub/virus.com"] == "OK"  # the hazard
    result = clamwatch(*command, "--timeout", "2s", str(uploads))
    assert result.returncode == 2
    assert "the EICAR test file" in result.stderr
    assert "TemporaryDirectory full or not writable?" in result.stderr
    assert result.stdout == ""  # not one file said OK (nor anything else: none was sent)


def test_infected_only_and_json_records(clamd: PrivateClamd, uploads: Path) -> None:
    result = clamwatch("scan", "-i", "--json", "--address", clamd.unix_address, str(uploads))
    assert result.returncode == 1
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert records == [
        {
            "path": f"{uploads}/sub/virus.com",
            "verdict": "infected",
            "signature": EICAR_SIGNATURE,
            "transport": "fildes",
            "attempts": 1,
            "clamd_version": records[0]["clamd_version"],
        }
    ]
    assert records[0]["clamd_version"].startswith("ClamAV ")


def test_a_json_log_holds_the_json_lines_alone(
    clamd: PrivateClamd, uploads: Path, tmp_path: Path
) -> None:
    """With --json the summary goes to stderr: in the --log file too it broke
    the JSON lines (a log is read by a program, as stdout is)."""
    log = tmp_path / "scan.log"
    result = clamwatch(
        "scan", "--json", "-l", str(log), "--address", clamd.unix_address, str(uploads)
    )
    assert result.returncode == 1
    assert "SCAN SUMMARY" in result.stderr
    assert log.read_text() == result.stdout
    assert {json.loads(line)["verdict"] for line in log.read_text().splitlines()} == {
        "clean",
        "infected",
    }


def test_infected_only_still_names_what_was_not_scanned(
    clamd: PrivateClamd, uploads: Path, tmp_path: Path
) -> None:
    """As clamdscan -i prints ERROR lines: exit status 2 with no line naming
    the file was what -i gave (and nothing at all with --quiet)."""
    missing = tmp_path / "missing"
    args = ["scan", "--no-summary", "--address", clamd.unix_address, "-i"]
    result = clamwatch(*args, str(uploads), str(missing))
    assert result.returncode == 1  # found, as clamdscan: it outranks the error
    assert lines(result.stdout) == {
        f"{uploads}/sub/virus.com": f"{EICAR_SIGNATURE} FOUND",
        str(missing): "Not scanned: no such file or directory ERROR",
    }
    quiet = clamwatch(*args, "--quiet", str(missing))
    assert (quiet.returncode, quiet.stdout) == (2, "")
    assert quiet.stderr == f"{missing}: Not scanned: no such file or directory ERROR\n"


def test_odd_names_print_unambiguously(clamd: PrivateClamd, tmp_path: Path, eicar: bytes) -> None:
    newline = tmp_path / "two\nlines"
    backslash = tmp_path / "two\\nlines"  # a backslash and an n, not a newline
    latin1 = os.fsencode(tmp_path) + b"/caf\xe9"
    newline.write_bytes(eicar)
    backslash.write_text("clean")
    with open(latin1, "wb") as handle:
        handle.write(eicar)
    result = clamwatch("scan", "--no-summary", "--address", clamd.unix_address, str(tmp_path))
    assert result.returncode == 1
    assert lines(result.stdout) == {
        f"{tmp_path}/two\\nlines": f"{EICAR_SIGNATURE} FOUND",
        f"{tmp_path}/two\\\\nlines": "OK",
        f"{tmp_path}/caf\\xe9": f"{EICAR_SIGNATURE} FOUND",
    }
    as_json = clamwatch("scan", "--json", "--address", clamd.unix_address, str(tmp_path))
    records = [json.loads(line) for line in as_json.stdout.splitlines()]
    by_path = {r["path"]: r for r in records if "path_b64" not in r}
    # JSON escapes the newline itself: the two names stay two, each exact
    assert by_path[str(newline)]["verdict"] == "infected"
    assert by_path[str(backslash)]["verdict"] == "clean"
    (record,) = [r for r in records if "path_b64" in r]  # only the name that is not UTF-8
    assert base64.b64decode(record["path_b64"]) == latin1
    assert record["verdict"] == "infected"


def _closed_port() -> int:
    """A loopback TCP port that nothing listens on (one just given up)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@pytest.mark.parametrize(
    ("where", "reason"),
    [
        ("unix", "No such file or directory"),
        ("folder", "Connection refused (TMP is a directory, not a socket)"),
        ("tcp", "Connection refused"),
    ],
)
def test_unreachable_clamd_exits_2_naming_the_address_and_why(
    tmp_path: Path, where: str, reason: str
) -> None:
    (tmp_path / "f").write_text("f")
    reason = reason.replace("TMP", str(tmp_path))
    if where == "unix":
        address = f"unix://{tmp_path}/nothing.sock"
    elif where == "folder":  # a --address mistyped
        address = f"unix://{tmp_path}"
    else:
        address = f"tcp://127.0.0.1:{_closed_port()}"
    result = clamwatch("scan", "--timeout", "1s", "--address", address, str(tmp_path))
    assert result.returncode == 2
    assert f"cannot reach clamd at {address}: {reason}\n" in result.stderr
    # the engine's own event, through logging set up at its first message
    assert f"clamwatch: clamd at {address} is unreachable: {reason};" in result.stderr
    assert ": OK" not in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--address", "http://x"], "is not a clamd address"),
        (["--address", "tcp://host"], "needs a host and a port"),
        (["--max-stream-size", "lots"], "is not a size"),
        (["--max-file-size", "0"], "--max-file-size: '0': expected a size of 1 byte or more"),
        (["--timeout", "soon"], "is not a duration"),
        (["--request-timeout", "0s"], "--request-timeout: '0s': expected a duration of more"),
        (["--clamd-conf", "/nonexistent/clamd.conf"], "/nonexistent/clamd.conf"),
        (["--allmatch"], "clamwatch scan: error: unrecognized arguments: --allmatch"),
        (["-f", "/nonexistent/list"], "cannot read the file list /nonexistent/list: No such"),
        (["-f", "/dev/stdin", "-"], "the file list /dev/stdin is standard input, which the PATH"),
    ],
)
def test_bad_arguments_exit_2_with_a_clear_message(
    tmp_path: Path, args: list[str], message: str
) -> None:
    result = clamwatch("scan", *args, str(tmp_path))
    assert result.returncode == 2
    assert message in result.stderr


def test_a_path_or_a_file_list_is_needed() -> None:
    result = clamwatch("scan")
    assert result.returncode == 2
    assert "usage: clamwatch scan " in result.stderr
    assert "clamwatch scan: error: give at least one PATH, or --file-list" in result.stderr


def test_clamdscan_command_lines_work_with_a_file_list(
    clamd: PrivateClamd, uploads: Path, tmp_path: Path
) -> None:
    """-m and --config-file as clamdscan takes them; -f FILE: one path per
    line, as bytes, empty lines skipped, - a file named -; a list read from
    a pipe through /dev/stdin."""
    conf = tmp_path / "clamd.conf"
    conf.write_text(f"LocalSocket {clamd.socket_path}\n")
    odd = os.fsencode(tmp_path) + b"/caf\xe9 au lait"
    with open(odd, "wb") as f:
        f.write(b"clean")
    (tmp_path / "-").write_text("a file named -")
    listing = tmp_path / "list"
    listing.write_bytes(
        os.fsencode(uploads / "sub")
        + b"\n\n"
        + odd
        + b"\n-\n"
        + os.fsencode(tmp_path / "missing")
        + b"\n"  # the last line may end without one too
        + os.fsencode(uploads / "clean.txt")
    )
    command = ["scan", "-m", "--fdpass", "--config-file", str(conf), "--no-summary"]
    result = clamwatch(*command, "-f", str(listing), cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    assert lines(result.stdout) == {
        f"{uploads}/sub/virus.com": f"{EICAR_SIGNATURE} FOUND",
        f"{tmp_path}/caf\\xe9 au lait": "OK",
        "-": "OK",
        f"{tmp_path}/missing": "Not scanned: no such file or directory ERROR",
        f"{uploads}/clean.txt": "OK",
    }
    piped = clamwatch(
        *command, "-f", "/dev/stdin", str(uploads / "sub"), input=f"{uploads}/clean.txt\n"
    )
    assert piped.returncode == 1, piped.stderr
    assert lines(piped.stdout) == {
        f"{uploads}/sub/virus.com": f"{EICAR_SIGNATURE} FOUND",
        f"{uploads}/clean.txt": "OK",
    }


def test_a_list_that_stalls_does_not_hold_back_what_was_answered(
    clamd: PrivateClamd, uploads: Path
) -> None:
    """`inotifywait -m ... | clamwatch scan -f /dev/stdin`: each path's line
    comes while the list waits for its next path, as clamdscan's does, and
    output to a pipe included; the EICAR check confirms a clean reply at once."""
    scan = subprocess.Popen(
        [sys.executable, "-m", "clamwatch", "scan", "--address", clamd.unix_address,
         "-f", "/dev/stdin", "--no-summary"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env=_buffered_env(),
    )  # fmt: skip
    assert scan.stdin is not None and scan.stdout is not None
    try:
        for path, status in [
            (uploads / "clean.txt", "OK"),
            (uploads / "sub" / "virus.com", f"{EICAR_SIGNATURE} FOUND"),
        ]:
            scan.stdin.write(os.fsencode(path) + b"\n")
            scan.stdin.flush()
            line = _read_line(scan.stdout, 30)
            assert line == f"{path}: {status}\n".encode(), scan.stderr
        scan.stdin.close()
        assert scan.wait(30) == 1
        assert scan.stdout.read() == b""
    finally:
        scan.kill()
        scan.wait()
        for stream in (scan.stdin, scan.stdout, scan.stderr):
            if stream is not None:
                stream.close()


def test_lines_are_written_out_while_the_scan_waits_for_clamd(tmp_path: Path) -> None:
    """Output to a pipe: a file's line is not kept in a buffer while the scan
    waits for clamd's other replies (here a clamd that answers each session's
    first file and then stalls; three files over two sessions)."""
    for name in "abc":
        (tmp_path / name).write_text("clean\n")
    with FakeClamd(Faults(stall_after=3, repeat=True)) as fake:  # VERSIONCOMMANDS, STATS, a file
        scan = subprocess.Popen(
            [sys.executable, "-m", "clamwatch", "scan", "--address", fake.unix_address,
             "--no-eicar-check", "--no-summary", str(tmp_path)],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=_buffered_env(),
        )  # fmt: skip
        assert scan.stdout is not None and scan.stderr is not None
        try:
            line = _read_line(scan.stdout, 30)
            assert re.fullmatch(rf"{tmp_path}/[abc]: OK\n", line.decode()), line
            assert scan.poll() is None  # still waiting for the stalled file
        finally:
            scan.kill()
            scan.wait()
            scan.stdout.close()
            scan.stderr.close()


@pytest.mark.parametrize(
    ("sent", "status", "said"),
    [
        (signal.SIGTERM, 143, "stopped by SIGTERM"),
        (signal.SIGHUP, 129, "stopped by SIGHUP"),
        (signal.SIGINT, 130, "interrupted"),
    ],
)
def test_a_scan_stopped_by_a_signal_keeps_its_lines_and_says_so(
    tmp_path: Path, sent: signal.Signals, status: int, said: str
) -> None:
    """`timeout 1h clamwatch scan -l LOG /srv > report`: SIGTERM (or SIGHUP, or
    Ctrl-C) while clamd still has files. The lines of the files answered reach
    the file they were buffered for, and stderr and the log say that the scan
    did not finish (clamd answers each session's first file, then stalls;
    three files, two sessions)."""
    for name in "abc":
        (tmp_path / name).write_text("clean\n")
    report, log = tmp_path / "report", tmp_path / "log"
    with FakeClamd(Faults(stall_after=3, repeat=True)) as fake, open(report, "wb") as out:
        scan = subprocess.Popen(
            [sys.executable, "-m", "clamwatch", "scan", "--address", fake.unix_address,
             "--no-eicar-check", "-l", str(log), str(tmp_path)],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.PIPE, env=_buffered_env(),
        )  # fmt: skip
        try:
            # a session's first file answered (the log is line-buffered); at
            # least one file stays in flight
            wait_for(lambda: log.exists() and ": OK\n" in log.read_text(), 30,
                     "a file answered")  # fmt: skip
            scan.send_signal(sent)
            assert scan.wait(30) == status
            assert scan.stderr is not None
            assert scan.stderr.read().decode() == (
                f"clamwatch scan: {said} before every file was scanned\n"
            )
        finally:
            scan.kill()
            scan.wait()
            if scan.stderr is not None:
                scan.stderr.close()
    printed = report.read_text()
    assert re.fullmatch(rf"({tmp_path}/[abc]: OK\n){{1,2}}", printed), printed
    assert log.read_text() == printed + f"clamwatch scan: {said} before every file was scanned\n"


def _buffered_env() -> dict[str, str]:
    """The environment, with Python's output to a pipe block-buffered as an
    admin's shell has it (PYTHONUNBUFFERED would hide a line kept back)."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}


def _read_line(stream: io.BufferedReader | Any, timeout: float) -> bytes:
    """One line of ``stream``, failing after ``timeout`` s without one."""
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(stream.readline()))
    reader.start()
    reader.join(timeout)
    assert not reader.is_alive(), f"no line within {timeout} s"
    return got[0]


def test_quiet_prints_only_what_was_not_scanned_and_a_log_gets_every_line(
    clamd: PrivateClamd, uploads: Path, tmp_path: Path
) -> None:
    """A cron job's clamdscan command line: -c, -v, --stdout, -w, --quiet and
    --log. --quiet: nothing on stdout, the lines of files not scanned on stderr,
    the exit status as always; --log: every line and the summary appended."""
    conf = tmp_path / "clamd.conf"
    conf.write_text(f"LocalSocket {clamd.socket_path}\n")
    log = tmp_path / "scan.log"
    log.write_text("kept\n")
    missing = tmp_path / "missing"
    command = ["scan", "-c", str(conf), "-m", "--fdpass", "--stdout", "-w", "--quiet"]
    quiet = clamwatch(*command, "-l", str(log), str(uploads), str(missing))
    assert (quiet.returncode, quiet.stdout) == (1, "")
    assert quiet.stderr == f"{missing}: Not scanned: no such file or directory ERROR\n"
    logged = log.read_text()
    assert logged.startswith("kept\n")  # appended
    assert lines(logged.removeprefix("kept\n")) == {
        f"{uploads}/clean.txt": "OK",
        f"{uploads}/sub/virus.com": f"{EICAR_SIGNATURE} FOUND",
        str(missing): "Not scanned: no such file or directory ERROR",
    }
    assert "Infected files: 1\nNot scanned: 1\n" in logged
    clean = clamwatch(*command, "-v", str(uploads / "clean.txt"))
    assert (clean.returncode, clean.stdout) == (0, "")
    assert "transport fildes" in clean.stderr  # -v after scan, as clamdscan takes it
    unwritable = clamwatch(
        "scan", "-c", str(conf), "-l", str(tmp_path / "no" / "log"), str(uploads)
    )
    assert unwritable.returncode == 2 and unwritable.stdout == ""
    assert unwritable.stderr == (
        f"clamwatch scan: cannot open the log {tmp_path}/no/log: No such file or directory\n"
    )


def test_move_copy_and_remove_act_on_what_clamd_found(
    clamd: PrivateClamd, uploads: Path, tmp_path: Path, eicar: bytes
) -> None:
    """clamdscan's --move, --copy and --remove: a line after each FOUND line; the
    clean file stays; a --move directory inside the tree is not walked into, so
    nothing moved there is found again; a directory that is not there ends the
    scan before it starts."""
    quarantine = uploads / "q"
    quarantine.mkdir()
    (quarantine / "virus.com").write_bytes(b"already there: kept")
    (uploads / "zz.com").write_bytes(eicar)  # walked after q: q is left out all the same
    moved = clamwatch("scan", "--address", clamd.unix_address, "--no-summary", "--move",
                      str(quarantine), str(uploads))  # fmt: skip
    assert moved.returncode == 1, moved.stderr
    printed = moved.stdout.splitlines()  # in the order clamd answered
    assert sorted(printed) == [
        f"{uploads}/clean.txt: OK",
        f"{uploads}/sub/virus.com: {EICAR_SIGNATURE} FOUND",
        f"{uploads}/sub/virus.com: moved to '{quarantine}/virus.com.001'",
        f"{uploads}/zz.com: {EICAR_SIGNATURE} FOUND",
        f"{uploads}/zz.com: moved to '{quarantine}/zz.com'",
    ]
    for name in ("sub/virus.com", "zz.com"):  # each action's line right after its FOUND
        found = printed.index(f"{uploads}/{name}: {EICAR_SIGNATURE} FOUND")
        assert printed[found + 1].startswith(f"{uploads}/{name}: moved to ")
    assert sorted(os.listdir(quarantine)) == ["virus.com", "virus.com.001", "zz.com"]
    assert (quarantine / "virus.com").read_bytes() == b"already there: kept"
    assert sorted(p.name for p in uploads.rglob("*") if p.is_file() and p.parent != quarantine) == [
        "clean.txt"
    ]
    (uploads / "again.com").write_bytes(eicar)
    copied = clamwatch("scan", "--address", clamd.unix_address, "--no-summary", "-i", "--copy",
                       str(tmp_path), str(uploads / "again.com"))  # fmt: skip
    assert copied.stdout.splitlines() == [
        f"{uploads}/again.com: {EICAR_SIGNATURE} FOUND",
        f"{uploads}/again.com: copied to '{tmp_path}/again.com'",
    ]
    assert (tmp_path / "again.com").read_bytes() == (uploads / "again.com").read_bytes() == eicar
    removed = clamwatch("scan", "--address", clamd.unix_address, "--quiet", "--remove",
                        str(uploads / "again.com"), str(uploads / "clean.txt"))  # fmt: skip
    assert (removed.returncode, removed.stdout, removed.stderr) == (1, "", "")
    assert not (uploads / "again.com").exists() and (uploads / "clean.txt").exists()
    missing = clamwatch("scan", "--address", clamd.unix_address, "--move", str(tmp_path / "no"),
                        str(uploads))  # fmt: skip
    assert (missing.returncode, missing.stdout) == (2, "")
    assert missing.stderr == (
        f"clamwatch scan: cannot move infected files to {tmp_path}/no: no such directory\n"
    )


def test_clamd_conf_discovery_and_its_stream_limit(
    clamd: PrivateClamd, tmp_path: Path, eicar: bytes
) -> None:
    conf = tmp_path / "clamd.conf"
    conf.write_text(
        f"# a clamd.conf\nTCPSocket {clamd.tcp_port}\nTCPAddr 127.0.0.1\nStreamMaxLength 1K\n"
    )
    (tmp_path / "big").write_bytes(eicar + b"x" * 2048)
    (tmp_path / "small").write_bytes(eicar)
    result = clamwatch("scan", "--clamd-conf", str(conf), "--no-summary", str(tmp_path))
    assert result.returncode == 1
    assert lines(result.stdout) == {
        str(conf): "OK",
        f"{tmp_path}/big": "Not scanned: 2116 bytes, larger than clamd's StreamMaxLength"
        " (1024 bytes) ERROR",
        f"{tmp_path}/small": f"{EICAR_SIGNATURE} FOUND",
    }


@pytest.mark.parametrize("transport", ["--fdpass", "--stream"])
def test_exclude_path_in_clamd_conf_leaves_out_what_clamdscan_does(
    clamd: PrivateClamd, tmp_path: Path, eicar: bytes, transport: str
) -> None:
    """clamdscan skips, silently, what ExcludePath in its clamd.conf matches by the
    real path, when it walks the tree itself; so does `clamwatch scan`. The same
    tree, named as a relative path, and clamd.conf through both: the same files
    found, and nothing else printed; through a symbolic link to the tree (which
    clamdscan 1.4 prints OK unscanned) the same again."""
    root = tmp_path / "tree"
    for name in ("skip/a.com", "skip/deep/b.com", "keep/c.com", "keep/d.iso", "keep/e.com",
                 "keep/digit7.com", "top.com"):  # fmt: skip
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(eicar)
    (tmp_path / "link").symlink_to(root)
    conf = tmp_path / "clamd.conf"
    conf.write_text(
        f"LocalSocket {clamd.socket_path}\nTCPSocket {clamd.tcp_port}\nTCPAddr 127.0.0.1\n"
        f"ExcludePath ^{root}/skip/\n"  # a directory: pruned
        "ExcludePath \\.iso$\n"
        'ExcludePath "[[:digit:]]\\.com$"\n'  # POSIX bracket class, quoted
    )
    kept = ("keep/c.com", "keep/e.com", "top.com")
    clamdscan = subprocess.run(
        ["clamdscan", f"--config-file={conf}", "--multiscan", transport, "--no-summary", "tree"],
        capture_output=True, text=True, cwd=tmp_path, timeout=120, check=False,
    )  # fmt: skip
    # clamdscan prints real paths
    assert lines(clamdscan.stdout) == {
        f"{root}/{name}": f"{EICAR_SIGNATURE} FOUND" for name in kept
    }
    for top in ("tree", "link"):
        result = clamwatch(
            "scan", "--clamd-conf", str(conf), transport, "--no-summary", top, cwd=tmp_path
        )
        expected = {f"{top}/{name}": f"{EICAR_SIGNATURE} FOUND" for name in kept}
        assert (result.returncode, lines(result.stdout), result.stderr) == (1, expected, "")
    # -v says what was left out, and why
    verbose = clamwatch(
        "-v", "scan", "--clamd-conf", str(conf), transport, "link/keep/d.iso", cwd=tmp_path
    )
    assert "link/keep/d.iso: excluded (ExcludePath \\.iso$ in " in verbose.stderr
    assert verbose.returncode == 0 and "Scanned files: 0" in verbose.stdout


def scan_stdin(
    stdin: bytes | int, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    """`clamwatch scan ARGS` with ``stdin`` (bytes piped in, or a descriptor) as its input."""
    command = [sys.executable, "-m", "clamwatch", "scan", *args]
    if isinstance(stdin, bytes):
        return subprocess.run(
            command, input=stdin, capture_output=True, env=env, timeout=120, check=False
        )
    return subprocess.run(
        command, stdin=stdin, capture_output=True, env=env, timeout=120, check=False
    )


def test_a_low_limit_on_open_files_scans_every_file_and_says_what_to_raise(
    clamd: PrivateClamd, tmp_path: Path
) -> None:
    """Under a hard RLIMIT_NOFILE of 64 (a container, LimitNOFILE=): a tree of
    300 files is scanned whole, none of them "Too many open files"; a tree
    deeper than the limit allows is an error naming the limit and how to
    raise it, and the file at its bottom is not called clean."""
    tree = tmp_path / "tree"
    for n in range(300):
        folder = tree / f"d{n % 3}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"f{n}").write_text(f"clean {n}\n")
    deep = tmp_path / "deep"
    bottom = deep.joinpath(*["d"] * 70)
    bottom.mkdir(parents=True)
    (bottom / "f").write_text("clean\n")

    def limited(command: list[str]) -> list[str]:
        return ["prlimit", "--nofile=64:64", *command]

    command = ["scan", "--address", clamd.unix_address, "--no-summary"]
    wide = clamwatch(*command, str(tree), wrap=limited)
    assert wide.returncode == 0, wide.stdout[-2000:] + wide.stderr
    assert sorted(lines(wide.stdout).values()) == ["OK"] * 300
    too_deep = clamwatch(*command, str(deep), wrap=limited)
    assert too_deep.returncode == 2, too_deep.stderr
    [(where, error)] = lines(too_deep.stdout).items()
    assert where.startswith(f"{deep}/d/d/")
    assert error == (
        "reading the directory failed: Too many open files (this process may hold 64:"
        " raise the limit with ulimit -n, or LimitNOFILE= for a service) ERROR"
    )


@pytest.mark.parametrize("transport", ["--fdpass", "--stream"])
def test_standard_input_is_scanned_as_stdin(
    clamd: PrivateClamd, uploads: Path, eicar: bytes, transport: str
) -> None:
    address = clamd.unix_address if transport == "--fdpass" else clamd.tcp_address
    # 3 MiB: more than one read from the pipe, EICAR at its start
    body = eicar + b"x" * (3 << 20)
    found = scan_stdin(body, transport, "--no-summary", "--address", address, str(uploads), "-")
    assert found.returncode == 1, found.stderr
    assert lines(found.stdout.decode()) == {
        f"{uploads}/clean.txt": "OK",
        f"{uploads}/sub/virus.com": f"{EICAR_SIGNATURE} FOUND",
        "stdin": f"{EICAR_SIGNATURE} FOUND",
    }
    clean = scan_stdin(b"clean" * 1000, transport, "--json", "--address", address, "-")
    assert clean.returncode == 0, clean.stderr
    record = json.loads(clean.stdout)
    assert (record["path"], record["verdict"]) == ("stdin", "clean")
    assert record["transport"] == ("fildes" if transport == "--fdpass" else "instream")


def test_standard_input_over_the_stream_limit_is_not_scanned(
    clamd: PrivateClamd, eicar: bytes
) -> None:
    body = eicar + b"x" * 2048
    args = ["--stream", "--max-stream-size", "1K", "--no-summary", "--address", clamd.tcp_address]
    result = scan_stdin(body, *args, "-")
    assert result.returncode == 2
    assert lines(result.stdout.decode()) == {
        "stdin": "Not scanned: 2116 bytes, larger than clamd's StreamMaxLength (1024 bytes) ERROR"
    }


def test_a_file_larger_than_clamd_scans_is_not_scanned_and_the_limit_named(
    clamd_factory: ClamdFactory, tmp_path: Path, eicar: bytes
) -> None:
    """MaxFileSize 1M in the clamd.conf named: clamd would answer OK, unscanned."""
    server = clamd_factory(extra={"MaxFileSize": "1M"})
    over = tmp_path / "over.com"
    over.write_bytes(eicar + b"x" * (1 << 20))
    small = tmp_path / "small.com"
    small.write_bytes(eicar)
    address = ["--address", server.unix_address, "--no-summary"]
    conf = ["--clamd-conf", str(server.conf_path)]
    result = clamwatch("scan", *address, *conf, str(over), str(small))
    assert result.returncode == 1  # found in small, over not scanned: 1 wins, as in clamdscan
    size = (1 << 20) + len(eicar)
    assert lines(result.stdout) == {
        str(over): f"Not scanned: {size} bytes, larger than the 1048576 bytes clamd scans"
        f" (MaxFileSize in {server.conf_path}) ERROR",
        str(small): f"{EICAR_SIGNATURE} FOUND",
    }
    stated = clamwatch("scan", *address, "--max-file-size", "50", str(small))
    assert lines(stated.stdout) == {
        str(small): "Not scanned: 68 bytes, larger than the 50 bytes clamd scans"
        " (as given to clamwatch) ERROR"
    }
    assert stated.returncode == 2


def test_standard_input_that_cannot_be_read_or_copied_is_an_error(
    clamd: PrivateClamd,
    tmp_path: Path,
    eicar: bytes,
    tmpfs: Callable[[Path, str], None],
) -> None:
    args = ["--no-summary", "--address", clamd.unix_address, "-"]
    # open for writing only (Python itself will not start on a directory)
    write_only = os.open(tmp_path / "sink", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        unreadable = scan_stdin(write_only, *args)
    finally:
        os.close(write_only)
    assert unreadable.returncode == 2
    assert lines(unreadable.stdout.decode()) == {
        "stdin": "reading standard input failed: Bad file descriptor ERROR"
    }
    # a full disk under the temporary copy: an error, never the part that fit
    full = tmp_path / "full"
    tmpfs(full, "64k")
    body = eicar + b"x" * (1 << 20)
    no_room = scan_stdin(body, *args, env={**os.environ, "TMPDIR": str(full)})
    assert no_room.returncode == 2
    assert lines(no_room.stdout.decode()) == {
        "stdin": f"copying standard input to {full} failed: No space left on device ERROR"
    }
    assert os.listdir(full) == []  # an unnamed file: nothing left behind


def test_standard_input_can_be_named_once(clamd: PrivateClamd) -> None:
    result = scan_stdin(b"clean", "--address", clamd.unix_address, "-", "-")
    assert result.returncode == 2
    assert result.stderr == b"clamwatch scan: standard input (-) can be named only once\n"
    assert result.stdout == b""


def test_progress_line_on_request(clamd: PrivateClamd, uploads: Path) -> None:
    command = [sys.executable, "-m", "clamwatch", "scan", "--address", clamd.unix_address]
    shown = subprocess.run([*command, "--progress", str(uploads)], capture_output=True, check=False)
    assert shown.returncode == 1
    assert re.search(
        rb"\r\x1b\[K[12] files, [01] infected, 0 not scanned, \d+ files/s", shown.stderr
    )
    plain = subprocess.run([*command, str(uploads)], capture_output=True, check=False)
    assert plain.returncode == 1
    assert plain.stderr == b""  # stderr is not a terminal here


def test_progress_line_by_itself_on_a_terminal(clamd: PrivateClamd, uploads: Path) -> None:
    """With stderr on a terminal (a pty here) the progress line shows without --progress."""
    controller, terminal = pty.openpty()
    try:
        result = subprocess.run(
            [sys.executable, "-m", "clamwatch", "scan", "--address", clamd.unix_address,
             str(uploads)],
            stdout=subprocess.PIPE, stderr=terminal, check=False, timeout=60,
        )  # fmt: skip
        os.close(terminal)
        terminal = -1
        shown = b""
        while True:
            try:
                chunk = os.read(controller, 4096)
            except OSError:  # EIO: the terminal's last writer has gone
                break
            if not chunk:
                break
            shown += chunk
    finally:
        os.close(controller)
        if terminal >= 0:
            os.close(terminal)
    assert result.returncode == 1
    assert re.search(rb"\r\x1b\[K[12] files, [01] infected, 0 not scanned", shown), shown
    assert b"SCAN SUMMARY" in result.stdout  # the results still go to stdout


def test_help_documents_exit_status() -> None:
    result = clamwatch("scan", "--help")
    assert result.returncode == 0
    assert "exit status:" in result.stdout and "--fdpass" in result.stdout


@pytest.mark.parametrize("infected", [False, True])
def test_results_that_cannot_be_written_stop_the_scan(
    clamd: PrivateClamd, uploads: Path, infected: bool
) -> None:
    """A full disk under stdout is said on stderr, and the exit status is 2, or 1 when
    something was found: not Python's 1 for a traceback, which would read as "found"."""
    if not infected:
        (uploads / "sub" / "virus.com").unlink()
    with open("/dev/full", "w") as full:
        result = subprocess.run(
            [sys.executable, "-m", "clamwatch", "scan", "--address", clamd.unix_address,
             str(uploads)],
            stdout=full, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
            timeout=120, check=False,
        )  # fmt: skip
    assert result.returncode == (1 if infected else 2)
    assert result.stderr == "clamwatch scan: cannot write the results: No space left on device\n"


def test_a_log_that_cannot_be_written_is_named_as_what_failed(
    clamd: PrivateClamd, uploads: Path
) -> None:
    """Not "cannot write the results" while stdout takes them well."""
    only = str(uploads / "sub")  # one line: found before the log's first write fails
    result = clamwatch("scan", "-l", "/dev/full", "--address", clamd.unix_address, only)
    assert result.returncode == 1
    assert (
        result.stderr == "clamwatch scan: cannot write the log /dev/full: No space left on device\n"
    )
    assert f"{uploads}/sub/virus.com: {EICAR_SIGNATURE} FOUND" in result.stdout


def test_a_reader_that_goes_away_ends_the_scan_quietly(clamd: PrivateClamd, tmp_path: Path) -> None:
    """`clamwatch scan ... | head -1`: no traceback and no message, exit status 2."""
    root = tmp_path / "many"
    root.mkdir()
    for number in range(3000):
        (root / f"f{number:04}").write_text(f"clean {number}\n")
    read, write = os.pipe()
    process = subprocess.Popen(
        [sys.executable, "-m", "clamwatch", "scan", "--no-summary", "--address",
         clamd.unix_address, str(root)],
        stdout=write, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    os.close(write)
    with os.fdopen(read, "rb") as reader:
        first = reader.readline()
    # the pipe is closed now: the next write the scan makes fails with EPIPE
    _, stderr = process.communicate(timeout=120)
    assert first.endswith(b": OK\n")
    assert process.returncode == 2
    assert stderr == ""


def test_every_line_reaches_a_pipe_though_the_process_skips_its_teardown(
    clamd: PrivateClamd, tmp_path: Path
) -> None:
    """scan ends with os._exit (cli._exit_now), past Python's own flush at exit.

    Output to a pipe is block-buffered: every line and the summary must
    still arrive, whichever of run_scan and _exit_now flushes them.
    """
    root = tmp_path / "many"
    root.mkdir()
    for number in range(300):
        (root / f"f{number:03}.txt").write_text(f"clean file {number}\n")
    result = clamwatch("scan", "--address", clamd.unix_address, str(root))
    assert result.returncode == 0, result.stderr
    assert lines(result.stdout) == {f"{root}/f{n:03}.txt": "OK" for n in range(300)}
    assert "Scanned files: 300" in result.stdout
    assert result.stdout.endswith("\n")


def test_a_socket_this_user_may_not_use_fails_at_once_naming_owner_and_mode(
    clamd_factory: Callable[..., PrivateClamd], tmp_path: Path
) -> None:
    server = clamd_factory(max_threads=1)
    owner = deny_root(server.socket_path)
    (tmp_path / "f").write_text("f")
    result = clamwatch(
        *("scan", "--timeout", "120s", "--address", server.unix_address, str(tmp_path)),
        wrap=without_dac_override,
        # far below --timeout: a denial is not waited out like an absent clamd
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert f"cannot reach clamd at {server.unix_address}: Permission denied" in result.stderr
    assert f"{server.socket_path} is srw------- {owner}" in result.stderr
    assert "this process runs as root" in result.stderr
    assert ": OK" not in result.stdout


def test_a_denial_that_ends_at_once_is_waited_out(
    clamd_factory: Callable[..., PrivateClamd], tmp_path: Path
) -> None:
    # clamd creates its socket before it applies LocalSocketMode and
    # LocalSocketGroup: a scan that starts in between must not give up
    server = clamd_factory(max_threads=1)
    deny_root(server.socket_path)
    (tmp_path / "f").write_text("f")
    command = [sys.executable, "-m", "clamwatch", "scan", "--address", server.unix_address]
    process = subprocess.Popen(
        without_dac_override([*command, str(tmp_path)]),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert process.stderr is not None
        first = process.stderr.readline()  # the engine's warning, at the first denial
        assert "is unreachable: Permission denied" in first
        os.chown(server.socket_path, 0, 0)
        out, err = process.communicate(timeout=60)
    finally:
        process.kill()
        process.wait()
    assert process.returncode == 0, first + err
    assert lines(out) == {f"{tmp_path}/f": "OK"}


def _with_closed(redirect: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`clamwatch ARGS` started with a standard descriptor closed by ``redirect`` (bash's)."""
    command = ["bash", "-c", f'exec "$@" {redirect}', "bash", sys.executable, "-m", "clamwatch"]
    return subprocess.run(
        [*command, *args], capture_output=True, text=True, timeout=120, check=False
    )


def test_a_closed_standard_descriptor_changes_no_verdict(
    clamd: PrivateClamd, uploads: Path, tmp_path: Path
) -> None:
    log = tmp_path / "scan.log"
    scan = ["scan", "--address", clamd.unix_address]
    # stdout closed: the scan goes on, its lines lost but for the log, and
    # the status is the scan's (it was 1, from a traceback, on a clean tree)
    found = _with_closed(">&-", *scan, "--log", str(log), str(uploads))
    assert found.returncode == 1, found.stderr
    assert found.stderr == "clamwatch: standard output is closed: its lines go to /dev/null\n"
    assert f"{uploads / 'sub' / 'virus.com'}: {EICAR_SIGNATURE} FOUND" in log.read_text()
    clean = _with_closed(">&-", *scan, str(uploads / "clean.txt"))
    assert (clean.returncode, clean.stdout) == (0, ""), clean.stderr
    # stderr closed: stdout as ever (the scan failed on its first use of stderr)
    quiet = _with_closed("2>&-", *scan, "--no-summary", str(uploads / "clean.txt"))
    assert (quiet.returncode, quiet.stdout) == (0, f"{uploads / 'clean.txt'}: OK\n")
    # stdin closed: `-` is no empty file to call clean
    no_input = _with_closed("<&-", *scan, "--no-summary", "-")
    assert no_input.returncode == 2
    assert lines(no_input.stdout) == {
        "stdin": "reading standard input failed: Bad file descriptor ERROR"
    }
