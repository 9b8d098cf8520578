"""The emulator's server (escalator_dev/emulator/server.py): the spawned simulator's output is
drained, since a full pipe would freeze it (found in the full-scale crash loop, where it
stopped answering after about four minutes)."""

from __future__ import annotations

import subprocess
import sys
import threading

from escalator_dev.emulator import server as sim


def test_spawned_output_is_drained_so_a_chatty_child_never_blocks(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    # A child that prints its URL line, then writes 1 MiB (16 pipe buffers), then exits.
    script = (
        "import sys; print('listening on http://127.0.0.1:1', flush=True);"
        "sys.stdout.write('x' * (1 << 20)); sys.stdout.flush()"
    )
    real = subprocess.Popen

    def popen(args, **kwargs):  # type: ignore[no-untyped-def]
        return real([sys.executable, "-c", script], **kwargs)

    monkeypatch.setattr(sim.subprocess, "Popen", popen)
    proc, url = sim.spawn()
    assert url == "http://127.0.0.1:1"
    # Without the drain the child would block on write forever; with it, it exits.
    assert proc.wait(timeout=20) == 0
    assert isinstance(proc.escalator_drain, threading.Thread)  # type: ignore[attr-defined]
    sim.terminate(proc)
    assert proc.stdout is not None and proc.stdout.closed
