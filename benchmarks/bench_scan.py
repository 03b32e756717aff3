"""`clamwatch scan` against clamdscan on the same clamd and the same files.

The numbers this project is held to (shared design, "Numbers this project is
held to"): over 10,000 small files, `clamwatch scan --fdpass` is at least as
fast as `clamdscan --multiscan --fdpass` and within 5% of clamd's own
server-side MULTISCAN; `clamwatch scan --stream` is at least as fast as
`clamdscan --multiscan --stream`.

One private clamd (clamwatch.privateclamd) serves every tool. After one
untimed warm-up run of each tool, the tools take turns round by round, so
drift (page cache, CPU frequency, a noisy neighbour) hits all of them alike;
the starting tool rotates each round so none always runs first, and every
other round runs in reverse, so none always follows the same one. Every run is
checked: exit status 1, exactly the infected files reported FOUND, no error
line; a wrong answer stops the benchmark with exit status 2, because a fast
wrong scanner proves nothing.

Run it as ``.venv/bin/python benchmarks/bench_scan.py``; see benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from scratchfs import add_ext4_image_option, scratch_folder  # benchmarks/ is on sys.path

from clamwatch.privateclamd import CLAMD_BINARY, PrivateClamd
from clamwatch.testsig import EICAR_SIGNATURE, eicar_bytes

# Files per leaf directory, and leaf directories per top-level one: 10,000
# files make 20 top-level directories of 10 leaves of 50 files, so the walk
# (readdir, sorting, descending) is part of what is measured.
_FILES_PER_DIR = 50
_LEAVES_PER_TOP = 10

# "Small files": a few hundred bytes to a few KB, log-uniform so that most
# are small and some are several KB, as in an upload folder of documents.
_MIN_SIZE = 200
_MAX_SIZE = 8 * 1024

_INFECTED_FRACTION = 0.01

# Exit statuses of this script.
_EXIT_MISS = 1  # --strict and a target missed
_EXIT_WRONG = 2  # a tool gave a wrong answer, or the setup failed

_FOUND_SUFFIX = f": {EICAR_SIGNATURE} FOUND"

# A 1-minute load average above this before the first run gets a warning.
_BUSY_LOAD = 0.5

# Interpreter settings that change how fast a Python program runs and that a
# user's shell does not normally have (developer sandboxes and Dockerfiles
# often set the first two): unbuffered stdout makes a write() per line, and
# without written bytecode every start compiles the package again. The tools
# run without them unless --keep-python-env.
_SLOW_PYTHON_ENV = (
    "PYTHONUNBUFFERED",
    "PYTHONDONTWRITEBYTECODE",
    "PYTHONDEVMODE",
    "PYTHONMALLOC",
    "PYTHONMALLOCSTATS",
    "PYTHONTRACEMALLOC",
    "PYTHONPROFILEIMPORTTIME",
    "PYTHONASYNCIODEBUG",
    "PYTHONVERBOSE",
)


@dataclass(frozen=True, slots=True)
class Tool:
    key: str  # short name used in the table and the JSON
    label: str  # the command as a reader would type it
    argv: list[str]
    # clamwatch prints a line per file; clamdscan --multiscan only the FOUND ones.
    prints_every_file: bool


@dataclass(frozen=True, slots=True)
class Target:
    name: str
    numerator: str  # Tool.key
    denominator: str  # Tool.key
    limit: float


@dataclass(slots=True)
class Measurements:
    wall: list[float] = field(default_factory=list)  # seconds, one per round
    client_cpu: list[float] = field(default_factory=list)  # user+sys of the tool's processes
    clamd_cpu: list[float] = field(default_factory=list)  # user+sys of clamd during the run


class WrongAnswerError(Exception):
    """A tool's output or exit status does not match the files."""


TARGETS = (
    Target("clamwatch-fdpass / clamdscan-fdpass", "clamwatch-fdpass", "clamdscan-fdpass", 1.0),
    Target("clamwatch-fdpass / server-multiscan", "clamwatch-fdpass", "server-multiscan", 1.05),
    Target("clamwatch-stream / clamdscan-stream", "clamwatch-stream", "clamdscan-stream", 1.0),
)


# -- the files ----------------------------------------------------------------


def make_files(root: Path, count: int, seed: int) -> set[str]:
    """Write ``count`` small files below ``root``; return the paths of the infected ones.

    Sizes are log-uniform in [_MIN_SIZE, _MAX_SIZE]; half the files are text,
    half random bytes (clamd looks at each differently). 1% start with the
    EICAR string, which the private clamd's test signature matches at offset
    0; they are spread over the whole tree.
    """
    rng = random.Random(seed)
    infected_count = max(1, round(count * _INFECTED_FRACTION)) if count else 0
    infected_indices = set(rng.sample(range(count), infected_count))
    words = [
        b"invoice", b"report", b"upload", b"customer", b"total", b"amount", b"lorem",
        b"ipsum", b"dolor", b"quarterly", b"summary", b"draft", b"final", b"2024",
    ]  # fmt: skip
    infected: set[str] = set()
    for index in range(count):
        leaf, _ = divmod(index, _FILES_PER_DIR)
        top, sub = divmod(leaf, _LEAVES_PER_TOP)
        directory = root / f"dir{top:03d}" / f"sub{sub:02d}"
        if index % _FILES_PER_DIR == 0:
            directory.mkdir(parents=True, exist_ok=True)
        size = round(_MIN_SIZE * (_MAX_SIZE / _MIN_SIZE) ** rng.random())
        if index % 2:
            body = rng.randbytes(size)
            name = f"file{index:06d}.bin"
        else:
            text = b" ".join(rng.choice(words) for _ in range(size // 6 + 1))
            body = text[:size]
            name = f"file{index:06d}.txt"
        path = directory / name
        if index in infected_indices:
            body = eicar_bytes() + body
            infected.add(str(path))
        path.write_bytes(body)
    return infected


# -- the tools ------------------------------------------------------------------


def clamwatch_command() -> list[str]:
    """The console script beside this interpreter, else ``python -m clamwatch``."""
    script = Path(sys.executable).parent / "clamwatch"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "clamwatch"]


def build_tools(clamd: PrivateClamd, files: Path, configs: Path) -> list[Tool]:
    clamdscan = shutil.which("clamdscan")
    if clamdscan is None:
        raise RuntimeError("clamdscan is not installed (Debian package clamdscan): ./dev setup")
    # write_clamdscan_config() always writes the same file: copy the Unix one
    # aside before asking for the TCP one.
    unix_conf = configs / "clamdscan-unix.conf"
    unix_conf.write_text(clamd.write_clamdscan_config(tcp=False).read_text())
    tcp_conf = configs / "clamdscan-tcp.conf"
    tcp_conf.write_text(clamd.write_clamdscan_config(tcp=True).read_text())
    clamwatch = clamwatch_command()
    quiet = ["--no-summary", "--no-progress"]
    target = str(files)
    return [
        Tool(
            "clamwatch-fdpass",
            "clamwatch scan --fdpass --address unix://...",
            [*clamwatch, "scan", "--fdpass", "--address", clamd.unix_address, *quiet, target],
            prints_every_file=True,
        ),
        Tool(
            "clamdscan-fdpass",
            "clamdscan --multiscan --fdpass",
            [clamdscan, "--multiscan", "--fdpass", f"--config-file={unix_conf}", target],
            prints_every_file=False,
        ),
        Tool(
            "server-multiscan",
            "clamdscan --multiscan (clamd's MULTISCAN)",
            [clamdscan, "--multiscan", f"--config-file={unix_conf}", target],
            prints_every_file=False,
        ),
        Tool(
            "clamwatch-stream",
            "clamwatch scan --stream --address tcp://...",
            [*clamwatch, "scan", "--stream", "--address", clamd.tcp_address, *quiet, target],
            prints_every_file=True,
        ),
        Tool(
            "clamdscan-stream",
            "clamdscan --multiscan --stream (TCP)",
            [clamdscan, "--multiscan", "--stream", f"--config-file={tcp_conf}", target],
            prints_every_file=False,
        ),
    ]


# -- running and checking ----------------------------------------------------------


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _process_cpu(pid: int) -> float:
    """user+sys seconds of a running process, from /proc/PID/stat (proc(5))."""
    stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii")
    # comm (field 2) may hold spaces; the fields after it start past the last ")".
    fields = stat.rsplit(")", 1)[1].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, slots=True)
class RunResult:
    wall: float
    client_cpu: float
    clamd_cpu: float


def tool_environment(keep_python_env: bool) -> dict[str, str]:
    env = dict(os.environ)
    if not keep_python_env:
        for name in _SLOW_PYTHON_ENV:
            env.pop(name, None)
    return env


def run_tool(
    tool: Tool, clamd_pid: int, output: Path, errors: Path, env: dict[str, str]
) -> RunResult:
    """Run ``tool`` once, its stdout to ``output`` (a file: as cheap as /dev/null)."""
    with output.open("wb") as out, errors.open("wb") as err:
        cpu_before = _children_cpu()
        clamd_before = _process_cpu(clamd_pid)
        started = time.perf_counter()
        status = subprocess.call(
            tool.argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=env
        )
        wall = time.perf_counter() - started
        clamd_cpu = _process_cpu(clamd_pid) - clamd_before
        client_cpu = _children_cpu() - cpu_before
    if status != 1:
        raise WrongAnswerError(
            f"{tool.key} exited with status {status}, expected 1 (infected files found)\n"
            f"  command: {' '.join(tool.argv)}\n" + _tail(errors) + _tail(output)
        )
    return RunResult(wall, client_cpu, clamd_cpu)


def _tail(path: Path, lines: int = 10) -> str:
    text = path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:]
    return f"  --- last lines of {path.name}:\n" + "".join(f"  {line}\n" for line in text)


def check_output(tool: Tool, output: Path, infected: set[str], total: int) -> None:
    """Exactly the infected files FOUND, nothing in error, every file reported when printed."""
    found: set[str] = set()
    found_lines = ok_lines = 0
    problems: list[str] = []
    with output.open(encoding="utf-8", errors="surrogateescape") as lines:
        for raw in lines:
            line = raw.rstrip("\n")
            if line.endswith(_FOUND_SUFFIX):
                found_lines += 1
                found.add(line.removesuffix(_FOUND_SUFFIX))
            elif line.endswith(": OK"):
                ok_lines += 1
            elif line.endswith(" ERROR") and len(problems) < 5:
                problems.append(line)
    if problems:
        raise WrongAnswerError(f"{tool.key} reported errors:\n  " + "\n  ".join(problems))
    if found_lines != len(infected) or found != infected:
        missing = sorted(infected - found)[:5]
        extra = sorted(found - infected)[:5]
        raise WrongAnswerError(
            f"{tool.key} reported {found_lines} FOUND lines ({len(found)} distinct files),"
            f" expected exactly {len(infected)}; missed {missing}, unexpected {extra}"
        )
    if tool.prints_every_file and ok_lines != total - len(infected):
        raise WrongAnswerError(
            f"{tool.key} reported {ok_lines} files OK, expected {total - len(infected)}"
        )


# -- results ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Spread:
    median: float
    min: float
    max: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        return cls(statistics.median(values), min(values), max(values))


@dataclass(frozen=True, slots=True)
class ToolResult:
    command: str
    wall_seconds: Spread
    wall_seconds_per_round: list[float]
    client_cpu_seconds: Spread
    clamd_cpu_seconds: Spread


@dataclass(frozen=True, slots=True)
class TargetResult:
    name: str
    ratio: float  # median / median
    limit: float
    passed: bool
    # Paired by round: both ran within one round, under the same drift.
    paired_ratio: Spread


@dataclass(frozen=True, slots=True)
class Report:
    files: int
    infected: int
    rounds: int
    clamd_max_threads: int
    cpus: int
    clamd_version: str
    clamd_settings: dict[str, str]
    files_dir: str  # where the scanned files are (its file system matters: see README)
    filesystem: str  # the work folder's file system, and why (scratchfs)
    # os.getloadavg() before the first and after the last run: other work on
    # the machine shows here, and in the min-max spread.
    load_before: tuple[float, float, float]
    load_after: tuple[float, float, float]
    # Interpreter variables unset for the tools (see _SLOW_PYTHON_ENV).
    python_env_removed: list[str]
    tools: dict[str, ToolResult]
    targets: list[TargetResult]

    @property
    def missed(self) -> list[str]:
        return [target.name for target in self.targets if not target.passed]


def build_report(
    args: argparse.Namespace,
    *,
    clamd: PrivateClamd,
    tools: list[Tool],
    infected: int,
    files_dir: Path,
    filesystem: str,
    results: dict[str, Measurements],
    removed_env: list[str],
    load_before: tuple[float, float, float],
) -> Report:
    per_tool = {
        tool.key: ToolResult(
            tool.label,
            Spread.of(results[tool.key].wall),
            results[tool.key].wall,
            Spread.of(results[tool.key].client_cpu),
            Spread.of(results[tool.key].clamd_cpu),
        )
        for tool in tools
    }
    targets = []
    for target in TARGETS:
        num, den = results[target.numerator].wall, results[target.denominator].wall
        ratio = statistics.median(num) / statistics.median(den)
        paired = Spread.of([a / b for a, b in zip(num, den, strict=True)])
        targets.append(
            TargetResult(target.name, ratio, target.limit, ratio <= target.limit, paired)
        )
    return Report(
        files=args.files,
        infected=infected,
        rounds=args.rounds,
        clamd_max_threads=args.threads,
        cpus=len(os.sched_getaffinity(0)),
        clamd_version=clamd_version(),
        clamd_settings=dict(clamd.settings),
        files_dir=str(files_dir),
        filesystem=filesystem,
        load_before=load_before,
        load_after=os.getloadavg(),
        python_env_removed=removed_env,
        tools=per_tool,
        targets=targets,
    )


def clamd_version() -> str:
    """`clamd --version`: ClamAV's and the signatures' versions."""
    try:
        done = subprocess.run(
            [str(CLAMD_BINARY), "--version"], capture_output=True, text=True, check=False
        )
    except OSError:
        return "unknown"
    return done.stdout.strip()


def _format_load(load: tuple[float, float, float]) -> str:
    return "/".join(f"{value:.2f}" for value in load)


def format_table(report: Report) -> str:
    lines = [
        f"{report.files} files ({report.infected} infected), {report.rounds} rounds,"
        f" clamd MaxThreads {report.clamd_max_threads} on {report.cpus} CPUs"
        f" ({report.clamd_version}); files in {report.files_dir},"
        f" clamd's TemporaryDirectory {report.clamd_settings.get('TemporaryDirectory', '?')}",
        f"work folder: {report.filesystem}",
        f"load average (1/5/15 min) before {_format_load(report.load_before)},"
        f" after {_format_load(report.load_after)}",
        f"tools ran without {', '.join(report.python_env_removed)}"
        if report.python_env_removed
        else "tools ran with the caller's environment",
        "",
        f"{'tool':<18} {'median s':>9} {'min s':>8} {'max s':>8} {'files/s':>8}"
        f" {'tool cpu':>9} {'clamd cpu':>10}  command",
    ]
    for key, tool in report.tools.items():
        wall = tool.wall_seconds
        lines.append(
            f"{key:<18} {wall.median:>9.3f} {wall.min:>8.3f} {wall.max:>8.3f}"
            f" {report.files / wall.median:>8.0f} {tool.client_cpu_seconds.median:>9.2f}"
            f" {tool.clamd_cpu_seconds.median:>10.2f}  {tool.command}"
        )
    lines += [
        "",
        f"{'ratio of medians':<38} {'value':>6} {'target':>7}  result  paired by round",
    ]
    for target in report.targets:
        paired = target.paired_ratio
        lines.append(
            f"{target.name:<38} {target.ratio:>6.3f} {'<= ' + format(target.limit, '.2f'):>7}"
            f"  {'PASS' if target.passed else 'MISS':<6}"
            f"  {paired.median:.3f} ({paired.min:.3f}-{paired.max:.3f})"
        )
    lines += [
        "",
        "tool cpu / clamd cpu: median user+sys seconds per run of the tool's processes / of clamd",
    ]
    return "\n".join(lines)


# -- main -------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    cpus = len(os.sched_getaffinity(0))
    parser = argparse.ArgumentParser(
        description="Time clamwatch scan against clamdscan on one private clamd.",
    )
    parser.add_argument("--files", type=int, default=10_000, help="files to scan (default 10000)")
    parser.add_argument("--rounds", type=int, default=9, help="timed rounds (default 9)")
    parser.add_argument(
        "--threads",
        type=int,
        default=2 * cpus,
        help=f"clamd MaxThreads (default: 2 x CPUs = {2 * cpus})",
    )
    parser.add_argument("--seed", type=int, default=20240601, help="seed for the file contents")
    parser.add_argument(
        "--workdir",
        type=Path,
        help="where the files and clamd live (default: a new folder under /tmp, removed after)",
    )
    add_clamd_tmpdir_option(parser)
    add_ext4_image_option(parser)
    parser.add_argument("--keep", action="store_true", help="keep the work folder afterwards")
    parser.add_argument(
        "--keep-python-env",
        action="store_true",
        help="run the tools with PYTHONUNBUFFERED, PYTHONDONTWRITEBYTECODE and the like"
        " if they are set (default: unset them, as in a user's shell)",
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON on stdout"
                        " (the table then goes to stderr)")  # fmt: skip
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)
    if args.files < 1 or args.rounds < 1 or args.threads < 1:
        parser.error("--files, --rounds and --threads must be at least 1")
    return args


def _say(message: str) -> None:
    print(f"bench_scan: {message}", file=sys.stderr, flush=True)


def add_clamd_tmpdir_option(parser: argparse.ArgumentParser) -> None:
    """--clamd-tmpdir, read by clamd_tmp_setting (both benchmarks take it)."""
    parser.add_argument(
        "--clamd-tmpdir",
        type=Path,
        metavar="DIR",
        help="clamd's TemporaryDirectory (every clamd's, in bench_daemon), where clamd makes"
        " and removes a folder per scanned file (default: inside the work folder);"
        " /dev/shm/NAME puts it on a tmpfs, as README advises",
    )


def clamd_tmp_setting(args: argparse.Namespace) -> dict[str, str]:
    """clamd.conf's TemporaryDirectory as --clamd-tmpdir asks (made here), else nothing."""
    if args.clamd_tmpdir is None:
        return {}
    args.clamd_tmpdir.mkdir(parents=True, exist_ok=True)
    return {"TemporaryDirectory": str(args.clamd_tmpdir.absolute())}


def benchmark(args: argparse.Namespace, workdir: Path, filesystem: str) -> Report:
    files = workdir / "files"
    started = time.perf_counter()
    infected = make_files(files, args.files, args.seed)
    _say(f"wrote {args.files} files ({len(infected)} infected) in"
         f" {time.perf_counter() - started:.1f} s under {files}")  # fmt: skip
    # Debian's AppArmor profile lets clamd write only below /tmp: keep its
    # workdir there (PrivateClamd.diagnostics() says so when it fails).
    load_before = os.getloadavg()
    if load_before[0] > _BUSY_LOAD:
        _say(f"warning: load average {load_before[0]:.1f} before the run; other work on this"
             " machine will show in the spread")  # fmt: skip
    extra = clamd_tmp_setting(args)
    with PrivateClamd(workdir / "clamd", max_threads=args.threads, tcp=True, extra=extra) as clamd:
        clamd_pid = clamd.pid
        assert clamd_pid is not None
        tools = build_tools(clamd, files, workdir)
        output, errors = workdir / "stdout.txt", workdir / "stderr.txt"
        results = {tool.key: Measurements() for tool in tools}
        env = tool_environment(args.keep_python_env)
        dropped = sorted(set(os.environ) - set(env))
        if dropped:
            _say(f"running the tools without {', '.join(dropped)} (--keep-python-env keeps them)")
        for tool in tools:
            run = run_tool(tool, clamd_pid, output, errors, env)
            check_output(tool, output, infected, args.files)
            _say(f"warm-up {tool.key}: {run.wall:.3f} s")
        for round_number in range(args.rounds):
            # Rotate the order so that no tool always runs first, and reverse
            # it every other round: a rotation alone keeps the cycle, so each
            # tool would nearly always follow the same one.
            shift = round_number % len(tools)
            order = tools[shift:] + tools[:shift]
            for tool in order if round_number % 2 == 0 else order[::-1]:
                run = run_tool(tool, clamd_pid, output, errors, env)
                check_output(tool, output, infected, args.files)
                m = results[tool.key]
                m.wall.append(run.wall)
                m.client_cpu.append(run.client_cpu)
                m.clamd_cpu.append(run.clamd_cpu)
            walls = ", ".join(f"{k} {results[k].wall[-1]:.3f}" for k in results)
            _say(f"round {round_number + 1}/{args.rounds}: {walls}")
        return build_report(
            args,
            clamd=clamd,
            tools=tools,
            infected=len(infected),
            files_dir=files,
            filesystem=filesystem,
            results=results,
            removed_env=dropped,
            load_before=load_before,
        )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.workdir is not None:
        workdir = args.workdir.absolute()
        workdir.mkdir(parents=True, exist_ok=True)
    else:
        # Short: clamd's socket path must fit in sun_path (107 bytes).
        workdir = Path(tempfile.mkdtemp(prefix="cwbench-", dir="/tmp"))
    try:
        with scratch_folder(workdir, args.ext4_image, _say) as scratch:
            report = benchmark(args, scratch.folder, scratch.description)
    except WrongAnswerError as exc:
        _say(f"WRONG ANSWER, no timing reported:\n{exc}")
        return _EXIT_WRONG
    except RuntimeError as exc:  # clamd would not start, clamdscan missing
        _say(f"setup failed: {exc}")
        return _EXIT_WRONG
    finally:
        if args.keep or args.workdir is not None:
            _say(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    table = format_table(report)
    if args.json:
        print(table, file=sys.stderr)
        json.dump(dataclasses.asdict(report), sys.stdout, indent=2)
        print()
    else:
        print(table)
    return _EXIT_MISS if report.missed and args.strict else 0


if __name__ == "__main__":
    sys.exit(main())
