"""Saver processes for the SIGKILL test: ``python saver.py <location URL>``.

Imports once (the Azure SDK takes most of a second), then for every line on stdin forks a saver
that restores the location's latest checkpoint and saves progress+1, +2, ... without pause until
it is killed. It prints ``pid <pid>``; the saver prints ``start <n>`` before and ``saved <n>``
after each save; once the saver is dead it prints ``end <pid>``. Checkpoint n's data is
``payload(n)``, so a restored checkpoint can be checked byte for byte.
"""

from __future__ import annotations

import os
import random
import sys

from spotguard.step import CheckpointStore, open_store

SIZES = (0, 1, 777, 64 * 1024, 512 * 1024, 2 * 1024 * 1024)


def payload(progress: int) -> bytes:
    rng = random.Random(progress)
    return rng.randbytes(rng.choice(SIZES))


def saver(url: str) -> None:
    options = {}
    if os.environ.get("AZURE_STORAGE_CONNECTION_STRING"):
        options["connection_string"] = os.environ["AZURE_STORAGE_CONNECTION_STRING"]
    ckpts = CheckpointStore(open_store(url, **options), run_id="kill", step="saver", keep=2)
    last = ckpts.restore()
    progress = int(last.progress) if last else 0
    while True:
        progress += 1
        data = payload(progress)
        say(f"start {progress}")
        ckpts.save(data, progress=progress)
        say(f"saved {progress}")


def main() -> None:
    url = sys.argv[1]
    if url.startswith("abfs://"):
        import azure.storage.blob  # noqa: F401  (loaded before forking, once)
    while sys.stdin.readline():
        gate_r, gate_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                os.close(gate_w)
                os.read(gate_r, 1)  # the parent's "pid" line must come first on the shared stdout
                saver(url)
            finally:
                os._exit(1)
        os.close(gate_r)
        say(f"pid {pid}")
        os.write(gate_w, b"g")
        os.close(gate_w)
        os.waitpid(pid, 0)
        say(f"end {pid}")


def say(line: str) -> None:
    # One write per line: print() may write the text and the newline separately.
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
