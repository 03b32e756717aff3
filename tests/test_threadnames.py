"""Thread names in the kernel, read back from /proc as top -H and ps -L read them."""

from __future__ import annotations

import threading
from pathlib import Path

from clamwatch.threadnames import kernel_name, name_this_thread


def test_kernel_names_are_short_and_cut_to_fifteen_bytes() -> None:
    assert kernel_name("clamwatch-dispatch") == "cw-dispatch"
    assert kernel_name("clamwatch-action_3") == "cw-action_3"
    assert kernel_name("clamwatch-a-very-long-thread-name") == "cw-a-very-long-"
    # cut on a character, never inside one (é is two bytes)
    assert kernel_name("clamwatch-éééééééé") == "cw-éééééé"
    assert kernel_name("other") == "other"


def test_a_thread_names_itself_in_the_kernel() -> None:
    seen: list[str] = []

    def run() -> None:
        name_this_thread()
        tid = threading.get_native_id()
        seen.append(Path(f"/proc/self/task/{tid}/comm").read_text().rstrip("\n"))

    thread = threading.Thread(target=run, name="clamwatch-test-thread")
    thread.start()
    thread.join()
    assert seen == ["cw-test-thread"]
    # the calling thread's own name is untouched
    main = Path(f"/proc/self/task/{threading.get_native_id()}/comm").read_text()
    assert main.rstrip("\n") != "cw-test-thread"
