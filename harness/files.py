"""Writing files so that a killed run never leaves a half-written one behind, one-line warnings, and where an
error came from (the plugin frame that raised; the whole traceback on request)."""
from __future__ import annotations

import contextlib
import os
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path


class HarnessWarning(UserWarning):
    """Something was wrong but the harness recovered (e.g. a damaged cache entry, rebuilt).

    The ``harness`` command prints each as one line, ``warning: <message>``."""


def one_line(text: object) -> str:
    """``text`` with every run of whitespace (newlines included) collapsed to one space."""
    return " ".join(str(text).split())


def warn(message: str, category: type[Warning] = HarnessWarning) -> None:
    warnings.warn(one_line(message), category, stacklevel=3)


@contextlib.contextmanager
def one_line_warnings() -> Iterator[None]:
    """Within the block, a ``HarnessWarning`` prints as ``warning: <message>`` in one write to stderr (other
    warnings as Python prints them): for processes the ``harness`` command does not run, such as its
    ``--workers`` processes, whose warnings would otherwise show a file path and a source line."""
    previous = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, HarnessWarning):
            sys.stderr.write(f"warning: {message}\n")
            sys.stderr.flush()
        else:
            previous(message, category, filename, lineno, file, line)

    with warnings.catch_warnings():
        warnings.showwarning = show
        yield


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, flush it to disk, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass


def line_of(data: bytes, offset: int) -> int:
    """The 1-based line number of byte ``offset`` in ``data``."""
    return data.count(b"\n", 0, max(0, offset)) + 1


def not_utf8(path: Path, exc: UnicodeDecodeError, data: bytes | None = None) -> str:
    """``<file>:<line>: not UTF-8 ...; save it as UTF-8`` for a ``UnicodeDecodeError`` raised reading ``path``."""
    if data is None:
        try:
            data = Path(path).read_bytes()
        except OSError:
            data = b""
    bad = exc.object[exc.start:exc.start + 1] if isinstance(exc.object, (bytes, bytearray)) else b""
    if not data:
        return f"{path}: not UTF-8 text (byte 0x{bad.hex() or '??'} at offset {exc.start}); save the file as UTF-8"
    column = exc.start - data.rfind(b"\n", 0, exc.start)
    return f"{path}:{line_of(data, exc.start)}: not UTF-8 text (byte 0x{bad.hex() or '??'} at column {column}); save the file as UTF-8"


def read_utf8(path: Path, error: type[Exception]) -> str:
    """A text file's contents; a file that is not UTF-8 raises ``error`` with ``not_utf8``'s one line."""
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(not_utf8(path, exc, data)) from None


TRACEBACK_ENV = "HARNESS_TRACEBACK"


def print_traceback(exc: BaseException) -> None:
    """The whole traceback of ``exc`` on stderr when ``$HARNESS_TRACEBACK`` is set (behind a one-line message)."""
    if os.environ.get(TRACEBACK_ENV):
        import sys
        import traceback

        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)


def raising_frame(exc: BaseException):
    """The innermost frame of ``exc`` in code that is neither the harness's core, torch nor Python's import
    machinery (a plugin's own code, built-in plugins included), or None when the error is the harness's own."""
    import traceback

    core = Path(__file__).resolve().parent

    def ours(filename: str) -> bool:
        path = Path(filename).resolve()
        in_core = path.is_relative_to(core) and not path.is_relative_to(core / "plugins")
        return in_core or "torch" in path.parts or "importlib" in path.parts

    frames = [f for f in traceback.extract_tb(exc.__traceback__) if not f.filename.startswith("<") and not ours(f.filename)]
    return frames[-1] if frames else None


def raised_at(exc: BaseException, module: str | None = None, note: str = "") -> str:
    """`` (raised at FILE:LINE in FUNC)`` for ``raising_frame(exc)``, or nothing; ``note`` is added inside the
    brackets when that frame is in the file ``module`` (e.g. which head of which plugin raised)."""
    frame = raising_frame(exc)
    if frame is None:
        return ""
    own = module is not None and Path(frame.filename).resolve() == Path(module).resolve()
    return f" (raised at {frame.filename}:{frame.lineno} in {frame.name}{note if own else ''})"
