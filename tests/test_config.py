"""The configuration: the shipped file, and errors that name the file and the key."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from clamwatch import config
from clamwatch.clamd.job import TransportChoice
from clamwatch.clamd.settings import ClamdSettings
from clamwatch.config import ConfigError, load_config, parse_config

SHIPPED = Path(__file__).parent.parent / "etc" / "clamwatch" / "clamwatch.toml"


def uncommented_defaults(text: str) -> str:
    """The shipped file with every ``#key = value`` line made live."""
    lines = []
    for line in text.splitlines():
        match = re.match(r"^#(\[\[watch\]\]|\w+ = .*)$", line)
        lines.append(match.group(1) if match else line)
    return "\n".join(lines)


def test_shipped_config_loads_and_has_no_watch(tmp_path: Path) -> None:
    loaded = load_config(SHIPPED)
    assert loaded.watches == ()
    assert loaded.clamd == ClamdSettings()
    assert loaded.daemon == config.DaemonSettings()


def test_shipped_config_documents_every_key_with_its_default(tmp_path: Path) -> None:
    text = uncommented_defaults(SHIPPED.read_text())
    data = tomllib.loads(text)
    for section, keys in (
        ("clamd", config._CLAMD_KEYS),
        ("daemon", config._DAEMON_KEYS),
        ("quarantine", config._QUARANTINE_KEYS),
    ):
        assert set(data[section]) == set(keys), section
    assert set(data["watch"][0]) == set(config._WATCH_KEYS)
    parsed = parse_config(SHIPPED, data)
    # the documented values are the defaults
    assert parsed.clamd == ClamdSettings()
    assert parsed.daemon == config.DaemonSettings()
    assert parsed.quarantine == config.QuarantineSettings()
    watch = parsed.watches[0]
    assert watch == config.WatchConfig(path=Path("/srv/uploads"), name="/srv/uploads")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[clamd]\nadress = 'x'\n", "[clamd] unknown key 'adress'"),
        ("[clamd]\ntransport = 'pigeon'\n", "transport = 'pigeon': expected one of auto"),
        ("[clamd]\nsessions = 0\n", "sessions = 0: expected a whole number of 1 or more"),
        ("[clamd]\naddress = 'http://x'\n", "[clamd] address = 'http://x': 'http://x' is not a"),
        (
            "[clamd]\ntransport = 'fildes'\naddress = 'tcp://127.0.0.1:3310'\n",
            "[clamd] address 'tcp://127.0.0.1:3310' is TCP, which cannot pass descriptors,"
            " but transport = 'fildes' (set transport to",
        ),
        ("[daemon]\nsettle_time = -1\n", "settle_time = -1: expected a duration of 0 or more"),
        ("[[watch]]\npath = '/srv'\nmin_size = -5\n", "min_size = -5: expected a size of 0 or"),
        (
            "[[watch]]\npath = '/srv'\nmin_size = '2K'\nmax_size = '1K'\n",
            "[watch #1] min_size (2048 bytes) is over max_size (1024 bytes)",
        ),
        ("[[watch]]\npath = '/etc/hostname'\n", "path '/etc/hostname' is not a directory"),
        ("[daemon]\nsettle_time = 'soon'\n", "settle_time = 'soon': 'soon' is not a duration"),
        ("[daemon]\nmax_pending = '10'\n", "max_pending = '10': expected a whole number"),
        ("[daemon]\nstate_directory = 'var/lib'\n", "expected an absolute path"),
        ("[[watch]]\nname = 'x'\n", "[watch #1] has no path"),
        ("[[watch]]\npath = '/srv'\nexclude = '*.part'\n", "expected a list of strings"),
        ("[[watch]]\npath = '/srv'\nexclude_regex = ['(']\n", "is not a regular expression"),
        ("[[watch]]\npath = '/srv'\nmax_size = '10 apples'\n", "is not a size"),
        ("[[watch]]\npath = '/srv'\nskip_uids = ['www-data']\n", "a list of numeric uids"),
        ("[[watch]]\npath = '/srv'\n[[watch]]\npath = '/srv/a'\n", "lies inside watch '/srv'"),
        ("[[watch]]\npath = '/srv'\n[[watch]]\npath = '/srv'\n", "'/srv' is watched twice"),
        # the same folders by another way: ".." (links: the test below)
        ("[[watch]]\npath = '/srv/a/../b'\n[[watch]]\npath = '/srv/b/c'\n", "lies inside watch"),
        ("[[watch]]\npath = '/srv'\n[[watch]]\npath = '/srv/x/..'\n", "is watched twice"),
        # clamwatch's own folders are left out of every watch: a watch in one is never scanned
        (
            "[quarantine]\ndirectory = '/srv/up'\n[[watch]]\npath = '/srv/up'\n",
            "watch '/srv/up' is or lies inside [quarantine] directory '/srv/up'",
        ),
        (
            "[daemon]\nstate_directory = '/srv'\n[[watch]]\npath = '/srv/up'\n",
            "lies inside [daemon] state_directory '/srv', which clamwatch leaves out",
        ),
        (
            "[[watch]]\npath = '/srv'\non_clean = ['release']\nrelease_to = '/srv/out'\n",
            "release_to '/srv/out' of watch '/srv' lies inside watch '/srv'",
        ),
        (
            "[[watch]]\npath = '/a'\non_clean = ['release']\nrelease_to = '/b/out'\n"
            "[[watch]]\npath = '/b'\n",
            "release_to '/b/out' of watch '/a' lies inside watch '/b'",
        ),
        ("[watch]\npath = '/srv'\n", "an array of tables"),
        ("[daemons]\n", "unknown section 'daemons'"),
        ("[[watch]]\npath = '/srv'\non_clean = ['move']\n", "never quarantines clean files"),
        ("[[watch]]\npath = '/srv'\non_infected = ['release']\n", "for clean files only"),
        ("[[watch]]\npath = '/srv'\non_infected = ['move', 'remove']\n", "at most one of"),
        ("[[watch]]\npath = '/srv'\non_infected = ['burn']\n", "unknown action 'burn'"),
        ("[[watch]]\npath = '/srv'\non_infected = ['none', 'tag']\n", "cannot be combined"),
        ("[[watch]]\npath = '/srv'\non_clean = ['release']\n", "sets no release_to"),
        ("[[watch]]\npath = '/srv'\non_infected = ['hook']\n", "sets no hook command"),
        ("[[watch]]\npath = '/srv'\nchmod_on_failure = 'yes'\n", "expected true or false"),
        ("[[watch]]\npath = '/srv'\nlog_clean = 0\n", "expected true or false"),
        ("[clamd]\neicar_check = 'no'\n", "eicar_check = 'no': expected true or false"),
        ("[quarantine]\nmax_age = 'forever'\n", "is not a duration"),
        (
            "[quarantine]\nmax_age = 0\n",
            "max_age = 0: expected a duration of more than 0 (leave it empty for no limit)",
        ),
        (
            "[quarantine]\nmax_total_size = '0K'\n",
            "expected a size of more than 0 (leave it empty for no limit)",
        ),
        (
            "[clamd]\nrequest_timeout = '0s'\n",
            "expected a duration of more than 0 (leave it empty for the default)",
        ),
        ("[clamd]\nkeepalive = 0\n", "expected a duration of more than 0"),
        ("[[watch]]\npath = '/srv'\nhook_timeout = '0ms'\n", "expected a duration of more"),
        ("[clamd\n", "not valid TOML"),
    ],
)
def test_bad_config_names_file_key_and_problem(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "clamwatch.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}: ")
    assert message in str(info.value)


def test_watches_that_overlap_through_a_link_are_refused(tmp_path: Path) -> None:
    """Each file was scanned and acted on twice, once under each path."""
    (tmp_path / "real" / "sub").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "real")
    path = tmp_path / "clamwatch.toml"
    path.write_text(
        f"[[watch]]\npath = '{tmp_path}/real'\n[[watch]]\npath = '{tmp_path}/link/sub'\n"
    )
    with pytest.raises(ConfigError, match=f"watch '{tmp_path}/link/sub' lies inside watch"):
        load_config(path)


def test_values_the_human_way(tmp_path: Path) -> None:
    path = tmp_path / "clamwatch.toml"
    path.write_text(
        "[clamd]\ntransport = 'instream'\nrequest_timeout = '2m'\nmax_stream_size = '25M'\n"
        "max_file_size = '25M'\neicar_check = false\n[daemon]\nsettle_time = 1.5\n"
        "[[watch]]\npath = '/srv/up'\nexclude = ['*.part']\nmin_size = '1K'\nskip_uids = [33]\n"
    )
    loaded = load_config(path)
    assert loaded.clamd.transport is TransportChoice.INSTREAM
    assert loaded.clamd.request_timeout == 120.0
    assert loaded.clamd.max_stream_size == loaded.clamd.max_file_size == 25 << 20
    assert loaded.clamd.eicar_check is False
    assert loaded.daemon.settle_time == 1.5
    (watch,) = loaded.watches
    assert (watch.exclude, watch.min_size, watch.skip_uids) == (("*.part",), 1024, frozenset({33}))
    assert watch.name == "/srv/up"


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"missing\.toml: No such file or directory"):
        load_config(tmp_path / "missing.toml")


@pytest.mark.parametrize("glob", ["/cache/*", "cache/", ""])
def test_globs_that_can_never_match_are_refused(tmp_path: Path, glob: str) -> None:
    path = tmp_path / "clamwatch.toml"
    path.write_text(f"[[watch]]\npath = '/srv'\nexclude = ['{glob}']\n")
    with pytest.raises(ConfigError, match="can never match"):
        load_config(path)


BAD_CONFIGS = Path(__file__).parent / "bad-configs"


@pytest.mark.parametrize("bad", sorted(BAD_CONFIGS.glob("*.toml")), ids=lambda path: path.stem)
def test_each_bad_config_gives_its_message(bad: Path) -> None:
    """tests/bad-configs: one mistake per file; NAME.expected holds the message."""
    expected = bad.with_suffix(".expected").read_text().strip()
    with pytest.raises(ConfigError) as info:
        load_config(bad)
    assert str(info.value).startswith(f"{bad}: ")
    assert expected in str(info.value)


def test_check_config_refuses_each_bad_config() -> None:
    """The same folder through `clamwatch check-config`: exit 1, the message on stderr."""
    for bad in sorted(BAD_CONFIGS.glob("*.toml")):
        result = subprocess.run(
            [sys.executable, "-m", "clamwatch", "check-config", "--config", str(bad)],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
        assert result.returncode == 1, bad
        assert bad.with_suffix(".expected").read_text().strip() in result.stderr, bad


def layered(tmp_path: Path, main: str, **dropins: bytes | str) -> tuple[Path, Path]:
    """clamwatch.toml holding ``main``, and clamwatch.d/NAME.toml (b_toml=...) each drop-in."""
    path = tmp_path / "clamwatch.toml"
    path.write_text(main)
    directory = tmp_path / "clamwatch.d"
    directory.mkdir()
    for name, text in dropins.items():
        data = text.encode() if isinstance(text, str) else text
        (directory / name.replace("_toml", ".toml")).write_bytes(data)
    return path, directory


def test_hidden_drop_ins_and_editor_files_are_not_read(tmp_path: Path) -> None:
    """Emacs's lock of an open drop-in is `.#NAME.toml`, a link to nowhere: it
    failed every start and reload while the drop-in was open."""
    path, directory = layered(
        tmp_path, "[[watch]]\npath = '/srv/a'\n", b_toml="[[watch]]\npath = '/srv/b'\n"
    )
    (directory / ".#b.toml").symlink_to("root@host.4242:1700000000")
    (directory / ".b.toml").write_text("[[watch]]\npath = '/srv/a'\n")  # a hidden copy
    (directory / "b.toml~").write_text("[[watch]]\npath = '/srv/a'\n")  # a backup
    loaded = load_config(path)
    assert loaded.sources == (path, directory / "b.toml")
    assert [str(w.path) for w in loaded.watches] == ["/srv/a", "/srv/b"]


def test_a_drop_in_with_a_byte_order_mark_and_crlf_line_ends_is_read(tmp_path: Path) -> None:
    """Notepad's UTF-8 starts with a BOM, which tomllib took for a statement."""
    path, _ = layered(
        tmp_path,
        "[[watch]]\npath = '/srv/a'\n",
        b_toml=b"\xef\xbb\xbf[daemon]\r\nsettle_time = '1s'\r\n[[watch]]\r\npath = '/srv/b'\r\n",
    )
    loaded = load_config(path)
    assert loaded.daemon.settle_time == 1.0
    assert [str(w.path) for w in loaded.watches] == ["/srv/a", "/srv/b"]


def test_a_drop_in_that_is_not_utf8_is_an_error_naming_it_and_the_line(tmp_path: Path) -> None:
    """A UnicodeDecodeError before: check-config printed no file name, and a
    reload took it out of the daemon (see test_service)."""
    path, directory = layered(
        tmp_path, "[[watch]]\npath = '/srv/a'\n", b_toml=b"[[watch]]\n# caf\xe9\npath = '/srv/b'\n"
    )
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == (
        f"{directory / 'b.toml'}: line 2: byte 0xe9 is not UTF-8"
        " (TOML files are UTF-8; was it saved as Latin-1?)"
    )


def test_one_path_watched_in_two_files_names_both(tmp_path: Path) -> None:
    path, directory = layered(
        tmp_path,
        "[[watch]]\npath = '/srv/a'\n",
        b_toml="[[watch]]\npath = '/srv/b'\n",
        c_toml="[[watch]]\npath = '/srv/a'\non_infected = ['remove']\n",
    )
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(
        f"{directory / 'c.toml'}: '/srv/a' is watched twice (in {path}); a drop-in adds"
        " watches, it cannot change or remove one of another file"
    )


def test_a_watch_inside_another_file_s_watch_names_both(tmp_path: Path) -> None:
    path, directory = layered(
        tmp_path, "[[watch]]\npath = '/srv/a'\n", b_toml="[[watch]]\npath = '/srv/a/b'\n"
    )
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(
        f"{directory / 'b.toml'}: watch '/srv/a/b' lies inside watch '/srv/a' (in {path});"
    )


def test_a_drop_in_s_watch_is_held_to_the_folders_in_force_not_the_defaults(
    tmp_path: Path,
) -> None:
    """Checked alone, a drop-in was held to the default state folder
    (/var/lib/clamwatch), which the main file had moved away."""
    path, _ = layered(
        tmp_path,
        "[daemon]\nstate_directory = '/srv/cw'\n[quarantine]\ndirectory = '/srv/cw/q'\n",
        b_toml="[[watch]]\npath = '/var/lib/clamwatch/incoming'\n",
    )
    (watch,) = load_config(path).watches
    assert str(watch.path) == "/var/lib/clamwatch/incoming"
    # and the other way: a drop-in's watch in the folder the main file chose
    (tmp_path / "clamwatch.d" / "c.toml").write_text("[[watch]]\npath = '/srv/cw/in'\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(
        f"{tmp_path / 'clamwatch.d' / 'c.toml'}: watch '/srv/cw/in' is or lies inside"
        f" [daemon] state_directory '/srv/cw' (set in {path}), which clamwatch leaves out"
    )


def test_a_watch_in_a_default_folder_says_it_is_the_default(tmp_path: Path) -> None:
    path, directory = layered(
        tmp_path, "", b_toml="[[watch]]\npath = '/var/lib/clamwatch/quarantine/in'\n"
    )
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(
        f"{directory / 'b.toml'}: watch '/var/lib/clamwatch/quarantine/in' is or lies inside"
        " [quarantine] directory '/var/lib/clamwatch/quarantine' (its default), which"
    )


@pytest.mark.parametrize("address_in_main", [False, True])
def test_transport_and_address_from_two_files_name_each(
    tmp_path: Path, address_in_main: bool
) -> None:
    """Checked on the merged [clamd], the clash named the main file only,
    which set neither."""
    tcp = "[clamd]\naddress = 'tcp://127.0.0.1:3310'\n"
    path, directory = layered(
        tmp_path,
        tcp if address_in_main else "[daemon]\nsettle_time = '1s'\n",
        **{"10-fd_toml": "[clamd]\ntransport = 'fildes'\n"},
        **({} if address_in_main else {"20-tcp_toml": tcp}),
    )
    address_in = path if address_in_main else directory / "20-tcp.toml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == (
        f"{address_in}: [clamd] address 'tcp://127.0.0.1:3310' is TCP, which cannot pass"
        f" descriptors, but transport = 'fildes' (set in {directory / '10-fd.toml'})"
        " (set transport to 'instream' or 'auto', or address to a unix:// socket)"
    )


def test_a_later_file_that_sets_the_key_again_is_the_one_named(tmp_path: Path) -> None:
    path, directory = layered(
        tmp_path,
        "[clamd]\ntransport = 'fildes'\n",
        a_toml="[clamd]\naddress = 'tcp://127.0.0.1:3310'\n",
        b_toml="[clamd]\ntransport = 'fildes'\n",
    )
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{directory / 'a.toml'}: [clamd] address")
    assert f"transport = 'fildes' (set in {directory / 'b.toml'})" in str(info.value)


def test_a_reload_s_watch_in_the_folder_in_use_names_its_own_file(tmp_path: Path) -> None:
    """check_folders_in_use named the main file for a drop-in's watch."""
    path, directory = layered(
        tmp_path, "[[watch]]\npath = '/srv/a'\n", b_toml="[[watch]]\npath = '/srv/q/in'\n"
    )
    new = load_config(path)
    with pytest.raises(ConfigError) as info:
        config.check_folders_in_use(
            new, config.DaemonSettings(), config.QuarantineSettings(directory=Path("/srv/q"))
        )
    assert str(info.value).startswith(
        f"{directory / 'b.toml'}: watch '/srv/q/in' is or lies inside [quarantine] directory"
        " '/srv/q' (the running daemon's, kept until a restart), which clamwatch leaves out"
    )


def test_drop_ins_that_are_not_regular_files_are_skipped_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A folder named x.toml or a link to nothing failed every start and
    reload ("Is a directory", "No such file or directory"); systemd loads a
    unit despite such entries in its .d folder."""
    path, directory = layered(
        tmp_path, "[[watch]]\npath = '/srv/a'\n", b_toml="[[watch]]\npath = '/srv/b'\n"
    )
    (directory / "a.toml").mkdir()
    (directory / "c.toml").symlink_to(tmp_path / "gone.toml")
    with caplog.at_level("WARNING", logger="clamwatch.config"):
        loaded = load_config(path)
    assert loaded.sources == (path, directory / "b.toml")
    assert [str(w.path) for w in loaded.watches] == ["/srv/a", "/srv/b"]
    assert [r.getMessage() for r in caplog.records] == [
        f"{directory / 'a.toml'}: a directory, not read (only regular files in {directory}"
        " are drop-ins; rename or remove it to silence this)",
        f"{directory / 'c.toml'}: a link to nothing, not read (only regular files in"
        f" {directory} are drop-ins; rename or remove it to silence this)",
    ]
