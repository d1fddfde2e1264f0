"""The native build lock: a build killed mid-way never makes later loads wait forever."""

import subprocess
import sys
import threading
import time

from radixrt.model import native


def test_leftover_baton_is_removed(tmp_path):
    (tmp_path / "lock").write_text("")  # what cpp_extension leaves when its build is killed
    with native._build_lock(tmp_path):
        assert not (tmp_path / "lock").exists()


def test_lock_of_a_killed_builder_is_released(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, sys, time\n"
        f"fh = open({str(tmp_path / 'build.flock')!r}, 'a')\n"
        "fcntl.flock(fh, fcntl.LOCK_EX)\n"
        "print('held', flush=True)\n"
        "time.sleep(600)\n")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        entered = threading.Event()

        def take() -> None:
            with native._build_lock(tmp_path):
                entered.set()

        t = threading.Thread(target=take, daemon=True)
        t.start()
        time.sleep(0.5)
        assert not entered.is_set()  # a live builder holds it
        holder.kill()
        holder.wait()
        assert entered.wait(10)  # the kernel dropped the dead holder's lock
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
