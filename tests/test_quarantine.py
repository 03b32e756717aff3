"""The quarantine store with real files: moves, copies, races, full and foreign
file systems, restore round trips and retention."""

from __future__ import annotations

import base64
import errno
import hashlib
import json
import logging
import os
import shutil
import stat
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from clamwatch import quarantine as quarantine_module
from clamwatch import safefs
from clamwatch.files import FileIdentity, OpenedFile, open_for_scan
from clamwatch.quarantine import (
    QuarantineError,
    QuarantineRecord,
    QuarantineStore,
    TargetExistsError,
)
from clamwatch.quarantine_record import is_entry_id
from clamwatch.testsig import EICAR_SIGNATURE

DAY = 86400.0
CLAMD_VERSION = "ClamAV 1.4.1/27470/Tue Nov 24 09:00:00 2026"

Opener = Callable[[Path | str | bytes], OpenedFile]
Mounter = Callable[..., Path]


@pytest.fixture
def opener() -> Iterator[Opener]:
    """open_for_scan as the pipeline calls it; every descriptor is closed after the test."""
    opened: list[OpenedFile] = []

    def open_(path: Path | str | bytes) -> OpenedFile:
        result = open_for_scan(os.fsdecode(path))
        assert isinstance(result, OpenedFile), result
        opened.append(result)
        return result

    yield open_
    for item in opened:
        item.close()


@pytest.fixture
def store(tmp_path: Path) -> QuarantineStore:
    return QuarantineStore(tmp_path / "var" / "quarantine")


@pytest.fixture
def mount(tmp_path: Path) -> Iterator[Mounter]:
    """mount(*options) -> a fresh mount point; all are unmounted after the test."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs or a bind mount needs root")
    mounted: list[Path] = []

    def mount_(*args: str) -> Path:
        target = tmp_path / f"mnt{len(mounted)}"
        target.mkdir()
        result = subprocess.run(
            ["mount", *args, str(target)], capture_output=True, text=True, check=False
        )
        if result.returncode != 0:
            pytest.skip(f"mount {' '.join(args)} failed: {result.stderr.strip()}")
        mounted.append(target)
        return target

    yield mount_
    for target in reversed(mounted):
        subprocess.run(["umount", str(target)], check=True)


def tmpfs(mount: Mounter, size: str) -> Path:
    return mount("-t", "tmpfs", "-o", f"size={size}", "tmpfs")


def put(store: QuarantineStore, opened: OpenedFile, *, keep: bool) -> QuarantineRecord:
    record = store.quarantine(
        opened,
        signature=EICAR_SIGNATURE,
        clamd_version=CLAMD_VERSION,
        watch="/srv/uploads",
        keep_original=keep,
    )
    assert record is not None
    return record


def entry_files(store: QuarantineStore) -> list[str]:
    return sorted(os.listdir(store.directory))


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- moving and copying -----------------------------------------------------------


def test_move_on_the_same_file_system(
    store: QuarantineStore, watched: Path, opener: Opener, eicar: bytes
) -> None:
    path = watched / "virus.com"
    path.write_bytes(eicar)
    opened = opener(path)
    before = time.time()
    record = put(store, opened, keep=False)

    assert not path.exists()
    assert is_entry_id(record.id)
    data = store.directory / record.id
    assert data.read_bytes() == eicar
    assert stat.S_IMODE(data.stat().st_mode) == 0o600
    assert data.stat().st_ino == opened.identity.ino  # renamed, not copied
    assert stat.S_IMODE(store.directory.stat().st_mode) == 0o700
    assert stat.S_IMODE(store.directory.parent.stat().st_mode) == 0o700
    assert entry_files(store) == [record.id, f"{record.id}.json"]

    identity = opened.identity
    assert record == QuarantineRecord(
        id=record.id, original_path=str(path), watch="/srv/uploads",
        signature=EICAR_SIGNATURE, clamd_version=CLAMD_VERSION,
        detected_at=record.detected_at, owner=identity.uid, group=identity.gid,
        mode=identity.mode, size=len(eicar), mtime_ns=identity.mtime_ns,
        sha256=sha256(eicar), dev=identity.dev, ino=identity.ino, how="moved",
    )  # fmt: skip
    assert before <= record.detected_at <= time.time()
    assert stat.S_ISREG(record.mode)
    on_disk = json.loads((store.directory / f"{record.id}.json").read_text())
    assert base64.b64decode(on_disk["original_path_b64"]) == os.fsencode(path)
    assert store.get(record.id) == record
    assert store.list() == [record]


def test_a_name_that_is_not_utf8_is_kept_as_its_exact_bytes(
    store: QuarantineStore, watched: Path, opener: Opener, eicar: bytes
) -> None:
    raw = os.fsencode(watched) + b"/caf\xe9 \\ new\nline.com"
    with open(raw, "wb") as handle:
        handle.write(eicar)
    record = put(store, opener(raw), keep=False)

    on_disk = json.loads((store.directory / f"{record.id}.json").read_bytes())
    assert base64.b64decode(on_disk["original_path_b64"]) == raw
    assert on_disk["original_path"].endswith("/caf\\xe9 \\ new\nline.com")
    assert os.fsencode(store.get(record.id).original_path) == raw

    assert store.restore(record.id) == os.fsdecode(raw)
    with open(raw, "rb") as handle:
        assert handle.read() == eicar


def test_copy_keeps_the_original(
    store: QuarantineStore, watched: Path, opener: Opener, eicar: bytes
) -> None:
    path = watched / "virus.com"
    path.write_bytes(eicar)
    opened = opener(path)
    record = put(store, opened, keep=True)

    assert record.how == "copied"
    assert path.read_bytes() == eicar
    assert os.lstat(path).st_ino == opened.identity.ino
    data = store.directory / record.id
    assert data.read_bytes() == eicar
    assert data.stat().st_ino != opened.identity.ino
    assert stat.S_IMODE(data.stat().st_mode) == 0o600
    assert record.sha256 == sha256(eicar)


@pytest.mark.parametrize("keep", [False, True], ids=["move", "copy"])
def test_one_version_gives_one_entry(
    store: QuarantineStore, watched: Path, opener: Opener, eicar: bytes, keep: bool
) -> None:
    path = watched / "virus.com"
    path.write_bytes(eicar)
    first = put(store, opener(path), keep=keep)
    if keep:  # the same version, opened again for a second event
        assert put(store, opener(path), keep=keep) == first
    assert len(store.list()) == 1

    # a restarted daemon knows it from the records
    again = QuarantineStore(store.directory)
    identity = opener(path if keep else store.directory / first.id).identity
    assert again.holds(identity) == first


@pytest.mark.parametrize("keep", [False, True], ids=["move", "copy"])
def test_files_in_the_quarantine_itself_are_never_quarantined(
    store: QuarantineStore, watched: Path, opener: Opener, eicar: bytes, keep: bool
) -> None:
    # a watch that holds the quarantine directory scans the entries: a copy
    # of an entry would be another entry, and so on
    path = watched / "virus.com"
    path.write_bytes(eicar)
    first = put(store, opener(path), keep=keep)
    data = store.directory / first.id
    with pytest.raises(QuarantineError, match=f"{data} is in the quarantine directory"):
        put(store, opener(data), keep=keep)
    assert data.read_bytes() == eicar
    assert store.list() == [first]


@pytest.mark.parametrize("keep", [False, True], ids=["move", "copy"])
def test_eight_workers_at_once_give_one_entry(
    store: QuarantineStore, watched: Path, opener: Opener, eicar: bytes, keep: bool
) -> None:
    path = watched / "virus.com"
    path.write_bytes(eicar + os.urandom(3 << 20))  # large enough for the copies to overlap
    opened = [opener(path) for _ in range(8)]
    start = threading.Barrier(8)
    results: list[QuarantineRecord | None] = [None] * 8

    def worker(number: int) -> None:
        start.wait()
        results[number] = put(store, opened[number], keep=keep)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert results[0] is not None
    assert results == [results[0]] * 8
    assert entry_files(store) == [results[0].id, f"{results[0].id}.json"]
    assert path.exists() == keep


def test_a_file_replaced_after_its_scan_is_left_alone(
    store: QuarantineStore, watched: Path, opener: Opener, eicar: bytes
) -> None:
    path = watched / "upload.bin"
    path.write_bytes(eicar)
    opened = opener(path)
    replacement = watched / ".upload.bin.part"
    replacement.write_bytes(b"the new, not yet scanned content\n")
    replacement.replace(path)

    assert store.quarantine(
        opened, signature=EICAR_SIGNATURE, clamd_version=None, watch="w", keep_original=False
    ) is None  # fmt: skip
    assert path.read_bytes() == b"the new, not yet scanned content\n"
    assert entry_files(store) == []
    assert sorted(os.listdir(watched)) == ["upload.bin"]


def test_a_file_changed_after_its_scan_is_not_copied(
    store: QuarantineStore, watched: Path, opener: Opener, eicar: bytes
) -> None:
    path = watched / "growing.bin"
    path.write_bytes(eicar)
    opened = opener(path)
    with path.open("ab") as handle:
        handle.write(b"appended after the scan")

    for keep in (True, False):
        assert store.quarantine(
            opened, signature=EICAR_SIGNATURE, clamd_version=None, watch="w", keep_original=keep
        ) is None  # fmt: skip
    assert path.read_bytes() == eicar + b"appended after the scan"
    assert entry_files(store) == []


def test_a_symlink_swapped_in_is_not_followed(
    store: QuarantineStore, watched: Path, tmp_path: Path, opener: Opener, eicar: bytes
) -> None:
    victim = tmp_path / "etc-passwd"
    victim.write_bytes(b"root:x:0:0\n")
    path = watched / "virus.com"
    path.write_bytes(eicar)
    opened = opener(path)
    link = watched / "link"
    link.symlink_to(victim)
    link.replace(path)

    assert store.quarantine(
        opened, signature=EICAR_SIGNATURE, clamd_version=None, watch="w", keep_original=False
    ) is None  # fmt: skip
    assert path.is_symlink()
    assert os.readlink(path) == str(victim)
    assert victim.read_bytes() == b"root:x:0:0\n"
    assert entry_files(store) == []


def test_a_file_with_other_hard_links_is_copied_and_each_name_removed_once(
    store: QuarantineStore, watched: Path, opener: Opener, eicar: bytes
) -> None:
    path = watched / "virus.com"
    path.write_bytes(eicar)
    other = watched / "same-inode.com"
    os.link(path, other)
    record = put(store, opener(path), keep=False)

    assert not path.exists()
    # the entry is an inode of its own: nobody changes it through `other`
    assert (store.directory / record.id).stat().st_ino != other.stat().st_ino
    assert record.how == "moved"
    # the other name is the same version: its event gets the same entry, and
    # since the content is safe in the quarantine the name goes too
    assert put(store, opener(other), keep=False) == record
    assert os.listdir(watched) == []
    assert len(store.list()) == 1


def test_name_collisions_never_overwrite(
    store: QuarantineStore,
    watched: Path,
    opener: Opener,
    eicar: bytes,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    taken = "20200101T000000Z-00000000"
    (store.directory / taken).write_bytes(b"someone else's entry")
    ids = iter([taken, "20200101T000000Z-00000001", taken, "20200101T000000Z-00000002"])
    monkeypatch.setattr(quarantine_module, "new_entry_id", lambda _at: next(ids))
    for number, keep in ((1, False), (2, True)):
        path = watched / f"virus{number}.com"
        path.write_bytes(eicar + bytes([number]))
        assert put(store, opener(path), keep=keep).id == f"20200101T000000Z-0000000{number}"
    assert (store.directory / taken).read_bytes() == b"someone else's entry"


def test_a_record_that_cannot_be_written_puts_the_file_back(
    store: QuarantineStore,
    watched: Path,
    opener: Opener,
    eicar: bytes,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = watched / "virus.com"
    path.write_bytes(eicar)
    path.chmod(0o644)
    opened = opener(path)

    def no_space(_directory: Path, _record: QuarantineRecord) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(quarantine_module, "write_record", no_space)
    with pytest.raises(QuarantineError, match=r"No space left on device.*put back"):
        put(store, opened, keep=False)
    assert path.read_bytes() == eicar
    assert os.lstat(path).st_ino == opened.identity.ino
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert entry_files(store) == []


# -- other file systems -----------------------------------------------------------


def test_move_across_file_systems_removes_the_original_only_after_the_copy(
    mount: Mounter,
    watched: Path,
    opener: Opener,
    eicar: bytes,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = QuarantineStore(tmpfs(mount, "4m") / "quarantine")
    path = watched / "virus.com"
    content = eicar + os.urandom(1 << 20)
    path.write_bytes(content)
    opened = opener(path)
    assert os.stat(store.directory).st_dev != opened.identity.dev

    removals: list[str] = []
    real_remove = safefs.remove_if_same

    def remove_if_same(target: str, identity: FileIdentity) -> bool:
        # by now the whole copy and its record are in the quarantine
        (entry,) = [name for name in os.listdir(store.directory) if "." not in name]
        assert (store.directory / entry).read_bytes() == content
        assert (store.directory / f"{entry}.json").exists()
        removals.append(target)
        return real_remove(target, identity)

    monkeypatch.setattr(safefs, "remove_if_same", remove_if_same)
    record = put(store, opened, keep=False)

    assert removals == [str(path)]
    assert record.how == "moved"
    assert not path.exists()
    assert (store.directory / record.id).read_bytes() == content
    assert stat.S_IMODE((store.directory / record.id).stat().st_mode) == 0o600
    assert record.sha256 == sha256(content)
    assert store.get(record.id) == record


def test_move_through_a_bind_mount_falls_back_to_a_copy(
    mount: Mounter, store: QuarantineStore, watched: Path, opener: Opener, eicar: bytes
) -> None:
    # systemd's ReadWritePaths bind-mounts each path: one file system (one
    # st_dev), yet rename(2) between them fails with EXDEV
    bound = mount("--bind", str(watched))
    (bound / "virus.com").write_bytes(eicar)
    opened = opener(bound / "virus.com")
    assert os.stat(store.directory).st_dev == opened.identity.dev

    record = put(store, opened, keep=False)
    assert record.how == "moved"
    assert not (watched / "virus.com").exists()
    assert (store.directory / record.id).read_bytes() == eicar


def test_a_file_swapped_during_a_move_across_file_systems_is_kept_as_a_copy(
    mount: Mounter, watched: Path, opener: Opener, eicar: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    store = QuarantineStore(tmpfs(mount, "4m") / "quarantine")
    victim = watched.parent / "victim"
    victim.write_bytes(b"not yours\n")
    path = watched / "virus.com"
    path.write_bytes(eicar)
    opened = opener(path)
    link = watched / "link"
    link.symlink_to(victim)
    link.replace(path)

    with caplog.at_level(logging.WARNING, logger="clamwatch.quarantine"):
        record = put(store, opened, keep=False)
    assert record.how == "copied"
    assert store.get(record.id).how == "copied"
    assert (store.directory / record.id).read_bytes() == eicar  # what was scanned
    assert path.is_symlink()
    assert victim.read_bytes() == b"not yours\n"
    assert f"copied into the quarantine as {record.id} but not removed" in caplog.text


@pytest.mark.parametrize("keep", [False, True], ids=["move", "copy"])
def test_a_full_quarantine_loses_nothing(
    mount: Mounter, watched: Path, opener: Opener, eicar: bytes, keep: bool
) -> None:
    store = QuarantineStore(tmpfs(mount, "64k") / "quarantine")
    path = watched / "big.iso"
    content = eicar + os.urandom(256 << 10)
    path.write_bytes(content)
    opened = opener(path)

    with pytest.raises(QuarantineError) as caught:
        put(store, opened, keep=keep)
    assert str(caught.value) == (
        f"cannot quarantine {path} into {store.directory}: No space left on device"
    )
    assert path.read_bytes() == content
    assert os.lstat(path).st_ino == opened.identity.ino
    assert entry_files(store) == []  # no partial data file, no record


def full_ext4(mount: Mounter, tmp_path: Path, name: str, content: bytes) -> Path:
    """A small ext4 with ``content`` as up/``name``, then filled up: its blocks, and
    the entries of up/, so that up/ takes no name more (nor a longer one).

    No hashed directory index (dir_index): a name then goes in any block with
    room for it, and a folder that took no short name more takes no longer
    one either; with the index, a name whose hash falls in a leaf with room
    still went in (the staging name is random: 3 runs in 4).
    """
    image = tmp_path / "small.ext4"
    with image.open("wb") as handle:
        handle.truncate(2 << 20)
    subprocess.run(
        ["mkfs.ext4", "-q", "-F", "-m", "0", "-b", "1024", "-N", "512",
         "-O", "^has_journal,^dir_index", str(image)],
        check=True,
    )  # fmt: skip
    up = mount("-o", "loop", str(image)) / "up"
    up.mkdir()
    (up / name).write_bytes(content)
    with (up.parent / "filler").open("wb", buffering=0) as filler, pytest.raises(OSError) as full:
        while True:
            filler.write(b"\0" * 4096)
    assert full.value.errno == errno.ENOSPC
    with pytest.raises(OSError) as full:
        for number in range(10_000):
            (up / f"n{number:04}").touch()
    assert full.value.errno == errno.ENOSPC
    return up


def test_a_move_whose_original_a_full_disk_cannot_remove_keeps_no_entry(
    mount: Mounter, tmp_path: Path, store: QuarantineStore, opener: Opener, eicar: bytes
) -> None:
    """Across file systems the original goes last, by a rename to a longer staging
    name first, which a full ext4 refuses (ENOSPC: its folder needs a new block).

    That was an entry "copied" beside the infected original, which stayed
    where it was while the action was reported done; every retry found the
    entry and did nothing more. Now it is an error naming the file and why,
    the copy is not kept, and the retry moves the file once there is room.
    """
    up = full_ext4(mount, tmp_path, "virus.com", eicar)
    path = up / "virus.com"
    assert os.stat(store.directory).st_dev != os.stat(up).st_dev
    with pytest.raises(QuarantineError) as caught:
        put(store, opener(path), keep=False)
    assert str(caught.value) == (
        f"cannot quarantine {path}: it was copied into {store.directory} but could not be"
        " removed (No space left on device); the copy is not kept"
    )
    assert path.read_bytes() == eicar
    assert entry_files(store) == []
    (up.parent / "filler").unlink()  # room again: the retry moves it
    record = put(store, opener(path), keep=False)
    assert record.how == "moved" and not path.exists()
    assert entry_files(store) == [record.id, f"{record.id}.json"]


# -- restoring --------------------------------------------------------------------


def quarantined(
    store: QuarantineStore, watched: Path, opener: Opener, content: bytes, name: str = "virus.com"
) -> tuple[Path, QuarantineRecord]:
    path = watched / name
    path.write_bytes(content)
    os.chown(path, 1234, 5678)
    path.chmod(0o640)
    os.utime(path, ns=(1_700_000_000_000_000_000, 1_600_000_000_123_456_789))
    return path, put(store, opener(path), keep=False)


def test_restore_round_trip(
    store: QuarantineStore, watched: Path, opener: Opener, eicar: bytes
) -> None:
    path, record = quarantined(store, watched, opener, eicar)
    assert not path.exists()

    assert store.restore(record.id) == str(path)
    st = os.lstat(path)
    assert path.read_bytes() == eicar
    assert (st.st_uid, st.st_gid) == (1234, 5678)
    assert stat.S_IMODE(st.st_mode) == 0o640
    assert st.st_mtime_ns == 1_600_000_000_123_456_789
    assert entry_files(store) == []
    assert os.listdir(watched) == ["virus.com"]  # no temporary file left behind
    with pytest.raises(QuarantineError, match=f"no quarantine entry {record.id}"):
        store.get(record.id)


def test_restore_never_overwrites_unless_told(
    store: QuarantineStore, watched: Path, opener: Opener, eicar: bytes
) -> None:
    path, record = quarantined(store, watched, opener, eicar)
    path.write_bytes(b"a new file of the same name\n")

    with pytest.raises(TargetExistsError, match=f"cannot restore {record.id}: .* already exists"):
        store.restore(record.id)
    assert path.read_bytes() == b"a new file of the same name\n"
    assert store.get(record.id) == record

    path.unlink()
    path.symlink_to("/etc/passwd")  # a link counts as existing; it is never followed
    with pytest.raises(TargetExistsError):
        store.restore(record.id)

    assert store.restore(record.id, overwrite=True) == str(path)
    assert not path.is_symlink()
    assert path.read_bytes() == eicar
    assert store.list() == []


def test_restore_elsewhere(
    store: QuarantineStore, watched: Path, tmp_path: Path, opener: Opener, eicar: bytes
) -> None:
    inspect = tmp_path / "inspect"
    inspect.mkdir()
    _, first = quarantined(store, watched, opener, eicar, "one.com")
    _, second = quarantined(store, watched, opener, eicar + b"2", "two.com")

    assert store.restore(first.id, str(inspect / "renamed.com")) == str(inspect / "renamed.com")
    assert (inspect / "renamed.com").read_bytes() == eicar
    # an existing directory receives it under its original name
    assert store.restore(second.id, str(inspect)) == str(inspect / "two.com")
    assert (inspect / "two.com").read_bytes() == eicar + b"2"
    assert os.listdir(watched) == []


def test_restore_into_a_missing_directory_says_so(
    store: QuarantineStore, watched: Path, tmp_path: Path, opener: Opener, eicar: bytes
) -> None:
    _, record = quarantined(store, watched, opener, eicar)
    with pytest.raises(QuarantineError) as caught:
        store.restore(record.id, str(tmp_path / "gone" / "x.com"))
    assert str(caught.value) == (
        f"cannot restore {record.id} to {tmp_path}/gone/x.com:"
        f" the directory {tmp_path}/gone does not exist"
    )
    assert store.get(record.id) == record


def test_restore_follows_no_link_put_in_place_of_a_folder_below_the_watch(
    store: QuarantineStore, tmp_path: Path, opener: Opener, eicar: bytes
) -> None:
    """An uploader who swaps a folder of the upload's path for a link would choose
    where a root restore writes (its owner and name too): refused, nothing
    written. The watch's own path is the admin's: a link on it is followed."""
    real = tmp_path / "srv-uploads"
    (real / "sub").mkdir(parents=True)
    watch = tmp_path / "uploads"  # as the admin configured it: a link
    watch.symlink_to(real)

    def quarantine(name: str) -> QuarantineRecord:
        (watch / name).write_bytes(eicar + name.encode())
        record = store.quarantine(
            opener(watch / name), signature=EICAR_SIGNATURE, clamd_version=CLAMD_VERSION,
            watch=str(watch), keep_original=False,
        )  # fmt: skip
        assert record is not None
        return record

    first = quarantine("sub/one.com")
    assert store.restore(first.id) == f"{watch}/sub/one.com"
    assert (real / "sub" / "one.com").read_bytes() == eicar + b"sub/one.com"

    second = quarantine("sub/k.com")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.rmtree(real / "sub")
    (real / "sub").symlink_to(elsewhere)
    with pytest.raises(QuarantineError) as caught:
        store.restore(second.id)
    assert str(caught.value) == (
        f"cannot restore {second.id} to {watch}/sub/k.com: a directory on its path below the"
        f" watch {watch} is now a symbolic link; give --to to choose where"
    )
    assert os.listdir(elsewhere) == []
    assert store.get(second.id) == second
    # named by the admin, a link is followed as any path is
    assert store.restore(second.id, f"{watch}/sub/") == f"{watch}/sub/k.com"
    assert (elsewhere / "k.com").read_bytes() == eicar + b"sub/k.com"


def test_restore_into_the_quarantine_itself_is_refused(
    store: QuarantineStore, watched: Path, opener: Opener, eicar: bytes
) -> None:
    """With --force onto its own content file, the restore replaced the file
    and then deleted the entry, and with it the only copy."""
    _, record = quarantined(store, watched, opener, eicar)
    data = store.directory / record.id
    with pytest.raises(QuarantineError, match="that is the quarantine itself"):
        store.restore(record.id, str(data), overwrite=True)
    assert data.read_bytes() == eicar and store.get(record.id) == record


def test_restore_to_a_folder_that_is_not_there_makes_no_file_of_it(
    store: QuarantineStore, watched: Path, tmp_path: Path, opener: Opener, eicar: bytes
) -> None:
    """--to /root/inspect/ (a folder meant, mistyped): no file named inspect."""
    _, record = quarantined(store, watched, opener, eicar)
    with pytest.raises(QuarantineError) as caught:
        store.restore(record.id, f"{tmp_path}/inspect/")
    assert str(caught.value) == (
        f"cannot restore {record.id} to {tmp_path}/inspect/: no such directory"
    )
    assert not (tmp_path / "inspect").exists()


def test_restore_refuses_altered_content(
    store: QuarantineStore, watched: Path, opener: Opener, eicar: bytes
) -> None:
    _, record = quarantined(store, watched, opener, eicar)
    (store.directory / record.id).write_bytes(b"tampered")
    with pytest.raises(QuarantineError, match="no longer matches its sha256"):
        store.restore(record.id)
    assert os.listdir(watched) == []
    assert store.get(record.id) == record


def test_restore_of_an_entry_whose_content_is_gone_says_so(
    store: QuarantineStore, watched: Path, opener: Opener, eicar: bytes
) -> None:
    _, record = quarantined(store, watched, opener, eicar)
    data = store.directory / record.id
    data.unlink()
    with pytest.raises(QuarantineError) as caught:
        store.restore(record.id)
    assert str(caught.value) == f"cannot restore {record.id}: its content {data} is missing"
    store.delete(record.id)  # still deletes, record and all
    assert entry_files(store) == []


# -- listing, deleting, retention -------------------------------------------------


def dated_entries(
    store: QuarantineStore,
    watched: Path,
    opener: Opener,
    monkeypatch: pytest.MonkeyPatch,
    entries: list[tuple[float, int]],
) -> list[QuarantineRecord]:
    """One entry per (detected_at, size), in that order."""
    records = []
    for number, (at, size) in enumerate(entries):
        monkeypatch.setattr(quarantine_module, "_clock", lambda at=at: at)
        path = watched / f"file{number}"
        path.write_bytes(bytes([number]) * size)
        records.append(put(store, opener(path), keep=False))
    monkeypatch.undo()
    return records


def test_list_is_oldest_first(
    store: QuarantineStore, watched: Path, opener: Opener, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = time.time()
    middle, old, new = dated_entries(
        store, watched, opener, monkeypatch, [(now - 2 * DAY, 1), (now - 3 * DAY, 1), (now, 1)]
    )
    assert store.list() == [old, middle, new]
    assert old.id < middle.id < new.id  # ids sort by detection time too


def test_unreadable_records_are_skipped_and_logged(
    store: QuarantineStore,
    watched: Path,
    opener: Opener,
    eicar: bytes,
    caplog: pytest.LogCaptureFixture,
) -> None:
    path = watched / "virus.com"
    path.write_bytes(eicar)
    good = put(store, opener(path), keep=False)
    broken = store.directory / "20200101T000000Z-0badbad0.json"
    broken.write_text('{"version": 1, "id": "20200101T000000Z-0badbad0"}')
    (store.directory / "notes.json").write_text("not ours, not an id: ignored")

    with caplog.at_level(logging.WARNING, logger="clamwatch.quarantine"):
        assert store.list() == [good]
    assert f"{broken}: unreadable quarantine record skipped" in caplog.text
    assert store.unreadable == ["20200101T000000Z-0badbad0"]
    with pytest.raises(QuarantineError, match=f"{broken} is malformed"):
        store.get("20200101T000000Z-0badbad0")
    # a damaged entry can still be deleted: it could never be restored, and
    # delete refused it ("malformed"), so it stayed for ever
    (store.directory / "20200101T000000Z-0badbad0").write_bytes(eicar)
    store.delete("20200101T000000Z-0badbad0")
    assert sorted(os.listdir(store.directory)) == sorted([good.id, f"{good.id}.json", "notes.json"])


@pytest.mark.parametrize("entry_id", ["../../etc/passwd", "", "20261125T095900Z-3f9a1c2b.json"])
def test_get_refuses_what_is_not_an_id(store: QuarantineStore, entry_id: str) -> None:
    with pytest.raises(QuarantineError, match="is not a quarantine entry id"):
        store.get(entry_id)


def test_delete_removes_content_and_record(
    store: QuarantineStore, watched: Path, opener: Opener, eicar: bytes
) -> None:
    path = watched / "virus.com"
    path.write_bytes(eicar)
    path2 = watched / "copy.com"
    path2.write_bytes(eicar)
    opened = opener(path2)
    record = put(store, opener(path), keep=False)
    copied = put(store, opened, keep=True)

    store.delete(record.id)
    assert store.list() == [copied]
    # deleted by another process (the CLI): a new event for the same version
    # is quarantined afresh instead of pointing at an entry that is gone
    QuarantineStore(store.directory).delete(copied.id)
    assert store.holds(opened.identity) is None
    assert put(store, opened, keep=True).id != copied.id
    with pytest.raises(QuarantineError, match=f"no quarantine entry {record.id}"):
        store.delete(record.id)


def test_purge_by_age(
    store: QuarantineStore, watched: Path, opener: Opener, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = 1_790_000_000.0
    old, older, recent = dated_entries(
        store, watched, opener, monkeypatch, [(now - 31 * DAY, 1), (now - 40 * DAY, 1), (now, 1)]
    )
    assert store.purge(30 * DAY, now=now) == [older.id, old.id]
    assert store.list() == [recent]
    assert entry_files(store) == [recent.id, f"{recent.id}.json"]


def test_retention_by_age_and_by_total_size(
    store: QuarantineStore, watched: Path, opener: Opener, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = 1_790_000_000.0
    a, b, c, d = dated_entries(
        store,
        watched,
        opener,
        monkeypatch,
        [(now - 10 * DAY, 100), (now - 3 * DAY, 200), (now - 2 * DAY, 300), (now, 400)],
    )
    assert store.total_size() == 1000
    assert store.enforce_retention(None, None, now=now) == []
    assert store.enforce_retention(7 * DAY, None, now=now) == [a.id]
    assert store.enforce_retention(None, 650, now=now) == [b.id, c.id]  # 900 -> 700 -> 400
    assert store.list() == [d]
    assert store.total_size() == 400
    assert store.enforce_retention(DAY, 1000, now=now) == []
    assert store.enforce_retention(None, 0, now=now) == [d.id]
    assert entry_files(store) == []
