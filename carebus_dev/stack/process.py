"""Detached processes with pid files: start, recognise, and stop them by process group."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path


class StackError(RuntimeError):
    """A local component could not be installed, started or stopped; the message says why."""


@dataclass(frozen=True)
class PidRecord:
    """What a pid file remembers about a process carebus started."""

    pid: int
    pgid: int
    argv: tuple[str, ...]

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"pid": self.pid, "pgid": self.pgid, "argv": list(self.argv)}))
        tmp.replace(path)

    @classmethod
    def read(cls, path: Path) -> PidRecord | None:
        try:
            raw = json.loads(path.read_text())
            return cls(pid=int(raw["pid"]), pgid=int(raw["pgid"]), argv=tuple(raw["argv"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None


def is_alive(pid: int) -> bool:
    """Whether `pid` is a live process (a zombie child of ours counts as dead and is reaped)."""
    with contextlib.suppress(ChildProcessError, OSError):
        reaped, _ = os.waitpid(pid, os.WNOHANG)
        if reaped == pid:
            return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # The state letter follows the parenthesised command name, which may itself contain spaces.
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def cmdline(pid: int) -> tuple[str, ...]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ()
    return tuple(part.decode(errors="replace") for part in raw.split(b"\0") if part)


def running(path: Path) -> PidRecord | None:
    """The process recorded in pid file `path` if it is still the same live process.

    The command line is compared as well, so a recycled pid is not mistaken for ours.
    """
    record = PidRecord.read(path)
    if record is None or not is_alive(record.pid):
        return None
    if cmdline(record.pid) != record.argv:
        return None
    return record


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # killpg also succeeds while only zombies remain; those are gone for our purposes.
    return any(is_alive(pid) for pid in pids_in_group(pgid))


def pids_in_group(pgid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        # fields: state, ppid, pgrp, ...
        if int(fields[2]) == pgid:
            found.append(int(entry.name))
    return found


def start_detached(
    argv: Sequence[str],
    *,
    log_path: Path,
    pid_path: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> tuple[subprocess.Popen[bytes], PidRecord]:
    """Start `argv` in its own session (it outlives the caller), output appended to `log_path`."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=True,
        )
    # Popen returns only after exec succeeded, so /proc already shows the final command line.
    record = PidRecord(pid=proc.pid, pgid=proc.pid, argv=cmdline(proc.pid) or tuple(argv))
    record.write(pid_path)
    return proc, record


def exit_description(returncode: int) -> str:
    """`returncode` of a child in words: "exit status 1" or "killed by SIGKILL"."""
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit status {returncode}"


def start_until_ready(
    name: str,
    argv: Sequence[str],
    ready: Callable[[], bool],
    *,
    log_path: Path,
    pid_path: Path,
    timeout_s: float,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> PidRecord:
    """Start `argv` detached and wait until `ready()`; a start that dies at once is tried again.

    Whether the child died is judged by its own exit status (it is our child), never by the
    pid file. A child that dies before `ready()` is started once more — a fresh broker or
    Prometheus on a busy box has been seen gone within its first second with nothing logged —
    and a second death is reported with the exit status and the log's last lines.
    """
    failure = ""
    for _attempt in range(2):
        proc, record = start_detached(argv, log_path=log_path, pid_path=pid_path, env=env, cwd=cwd)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                failure = (
                    f"{name} (pid {record.pid}) {exit_description(proc.returncode)} while "
                    f"starting; last lines of {log_path}:\n{tail(log_path, 30)}"
                )
                break
            if ready():
                return record
            time.sleep(0.2)
        else:
            stop_group(record.pgid)
            pid_path.unlink(missing_ok=True)
            raise StackError(
                f"{name} (pid {record.pid}) was not ready within {timeout_s:.0f} s; last lines "
                f"of {log_path}:\n{tail(log_path, 30)}"
            )
    raise StackError(failure)


def stop_group(pgid: int, *, timeout_s: float = 10.0) -> bool:
    """SIGTERM the process group, SIGKILL it after `timeout_s`; True if it had to be killed."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not group_alive(pgid):
            return False
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return True


def stop_recorded(pid_path: Path, *, timeout_s: float = 10.0) -> bool:
    """Stop the process group in `pid_path` if it is still ours, then remove the pid file.

    Returns True if something was running.
    """
    record = running(pid_path)
    if record is not None:
        stop_group(record.pgid, timeout_s=timeout_s)
    pid_path.unlink(missing_ok=True)
    return record is not None


def tail(path: Path, lines: int = 20) -> str:
    """The last `lines` lines of a log file, for error messages ('' if there is none)."""
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - 64 * 1024))
            text = handle.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def processes_mentioning(needles: Sequence[str], marker_env: str | None = None) -> list[int]:
    """Pids whose command line contains one of `needles` or whose environment has `marker_env`.

    Used after `down` to prove nothing of this stack is left running.
    """
    own = os.getpid()
    marker = marker_env.encode() if marker_env else None
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == own:
            continue
        pid = int(entry.name)
        if not is_alive(pid):
            continue
        line = " ".join(cmdline(pid))
        if any(needle and needle in line for needle in needles):
            found.append(pid)
            continue
        if marker is not None:
            try:
                environ = (entry / "environ").read_bytes()
            except OSError:
                continue
            if marker in environ.split(b"\0"):
                found.append(pid)
    return found
