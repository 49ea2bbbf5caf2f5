"""What keeps a run directory whole: one writer, flushed renames, a full disk as one line, fault points.

- `exclusive`: the run's lock (an flock on <model_dir>/.lock that the kernel drops when its holder
  dies), so a second process writing the same run is refused at once;
- `check_usable`: a --model_dir that cannot hold a run is one line before any work starts;
- `sync_directory` and `save_model_atomically`: a rename that survives, a model.keras never truncated
  (`rundir.write_json` writes JSON the same way);
- `is_disk_full` / `disk_full_as_user_error`: ENOSPC (also inside h5py) as one line;
- `fault_point`: where the tests kill the process or fill the disk inside every write.

No TensorFlow at module level; imports nothing of cdt_tf but errors.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import signal
import socket
import time
import zipfile

from cdt_tf.errors import UserError

LOCK = ".lock"

# Fault injection for the tests (tests/faults_test.py): CDT_TF_FAULTS="site:n:action,..." makes the
# n-th `fault_point(site)` of the process send itself SIGKILL ("KILL") or SIGINT ("INT"), or raise a
# full disk's OSError ("ENOSPC"). Sites sit inside every write of the run's state (FAULT_SITES).
FAULT_SITES = ("json", "metrics", "backup.partial", "backup.renamed", "backup.cleanup", "model.partial")
_fault_counts: dict[str, int] = {}


def fault_point(site: str) -> None:
    """A place inside a write where the tests can kill the process or fill the disk (see FAULT_SITES)."""
    faults = os.environ.get("CDT_TF_FAULTS")
    if not faults:
        return
    _fault_counts[site] = _fault_counts.get(site, 0) + 1
    for fault in faults.split(","):
        name, count, action = fault.split(":")
        if name == site and int(count) == _fault_counts[site]:
            if action == "ENOSPC":
                raise OSError(errno.ENOSPC, "No space left on device (injected)", site)
            if action == "KILL":
                os.kill(os.getpid(), signal.SIGKILL)
            else:  # To this thread, not the process: a SIGINT the kernel hands to one of TensorFlow's
                # threads reaches the interpreter only later, wherever the main thread then is.
                signal.raise_signal(signal.SIGINT)
            time.sleep(5)  # The signal has arrived: SIGINT raises KeyboardInterrupt by now.


def sync_directory(path: str) -> None:
    """fsync a directory, so that a rename in it survives a power cut (a no-op where unsupported)."""
    with contextlib.suppress(OSError):
        descriptor = os.open(path, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


def check_usable(model_dir: str) -> None:
    """Checks that model_dir can be created and written (leaving nothing behind); one-line UserError if not.

    Called before any work starts: a regular file, a path under a file, /proc, a read-only or
    immutable parent each get one line naming the path and the reason.
    """
    if os.path.exists(model_dir) and not os.path.isdir(model_dir):
        raise UserError(f"--model_dir {model_dir} is a file, not a directory; give the path of a directory")
    created, path = [], os.path.abspath(model_dir)
    while not os.path.exists(path):  # The folders the check creates, removed again after it.
        created.append(path)
        path = os.path.dirname(path)
    try:
        os.makedirs(model_dir, exist_ok=True)
        probe = os.path.join(model_dir, f".write-test-{os.getpid()}")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
        for folder in created:
            os.rmdir(folder)
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise UserError(
            f"--model_dir {model_dir} cannot hold a run ({reason}); give a directory you can write to"
        ) from error


# Locks this process holds: real path -> [descriptor, depth] (`exclusive` is re-entrant).
_HELD: dict[str, list[int]] = {}


@contextlib.contextmanager
def exclusive(model_dir: str):
    """Holds the run directory's lock: a second process that writes the same run is refused at once.

    An exclusive, non-blocking `flock` on model_dir/.lock, which names its holder (pid, host, since
    when). The kernel releases it when the holder exits or is killed, so no stale lock survives a
    crash. Re-entrant within a process (training, then its second stage). Raises UserError naming
    the holder when another process has it.
    """
    check_usable(model_dir)
    os.makedirs(model_dir, exist_ok=True)
    key = os.path.realpath(model_dir)
    if key in _HELD:
        _HELD[key][1] += 1
        try:
            yield
        finally:
            _HELD[key][1] -= 1
        return
    descriptor = os.open(os.path.join(model_dir, LOCK), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        holder = os.pread(descriptor, 300, 0).decode(errors="replace").strip() or "another process"
        os.close(descriptor)
        if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise
        raise UserError(
            f"--model_dir {model_dir} is in use by {holder}; wait for it to finish (or stop it: the same "
            "command then resumes), or give another --model_dir"
        ) from None
    since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    os.ftruncate(descriptor, 0)
    os.pwrite(descriptor, f"process {os.getpid()} on {socket.gethostname()} (since {since})\n".encode(), 0)
    _HELD[key] = [descriptor, 1]
    try:
        yield
    finally:
        _HELD[key][1] -= 1
        if not _HELD[key][1]:
            del _HELD[key]
            os.close(descriptor)  # Releases the flock; the file stays (removing it would race).


# What a full disk looks like in the errors of Python, h5py and TensorFlow.
_NO_SPACE = ("No space left on device", "errno = 28", "Disk quota exceeded")


def is_disk_full(error: BaseException) -> bool:
    """Whether an exception (or one it was raised from) says that the disk is full."""
    while error is not None:
        if getattr(error, "errno", None) in (errno.ENOSPC, errno.EDQUOT):
            return True
        if any(text in str(error) for text in _NO_SPACE):
            return True
        error = error.__cause__ or error.__context__
    return False


@contextlib.contextmanager
def disk_full_as_user_error(model_dir: str, doing: str):
    """A full disk while `doing` becomes one line: what is kept and that the same command resumes."""
    try:
        yield
    except Exception as error:
        if not is_disk_full(error):
            raise
        raise UserError(
            f"no space left on the disk of {model_dir} while {doing}; free some space and run the same "
            "command again: every finished epoch is kept (backup/), the one in progress is redone"
        ) from error


def save_model_atomically(model, path: str) -> None:
    """Writes a Keras model to `path` (.keras) atomically: to a temporary name beside it, checked
    complete (every zip member's CRC), flushed, then renamed. A kill or a full disk leaves no file
    at `path`, never a truncated one."""
    partial = os.path.join(os.path.dirname(path), PARTIAL_MODEL)
    try:
        model.save(partial)
        with zipfile.ZipFile(partial) as archive:
            damaged = archive.testzip()
        if damaged is not None:
            raise OSError(f"{partial} was written incompletely ({damaged})")
        with open(partial, "rb+") as f:
            os.fsync(f.fileno())
        fault_point("model.partial")
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(partial)
        raise
    os.replace(partial, path)
    sync_directory(os.path.dirname(path) or ".")


PARTIAL_MODEL = "model.partial.keras"
