"""The reliability battery's harness: run a case, check its outcome, keep the totals.

Every case states its input and the outcome it expects: an exit code and the words of the message
(CLI), or success / an error class and its words (Python API, app API). Whatever a case expects, the
harness also checks, for every case:

- no Python traceback reaches the user (stdout, stderr, or the app's message);
- no message says "unexpected" (an error the code did not foresee);
- a user error (exit 2) is ONE line ``textsam: error: ...`` on stderr;
- no file that existed before the case was removed or changed, unless the case names it as an output
  it may replace (``may_change``).

The totals (cases, clean, tracebacks, "unexpected", files lost or overwritten) are printed at the end of
the test run by ``tests/battery/conftest.py``.
"""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
from collections.abc import Callable, Iterable, Sequence
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Tally:
    """What the battery measured, case by case."""

    cases: dict[str, dict[str, bool]] = field(default_factory=dict)

    def add(self, case: str, *, clean: bool, traceback: bool, unexpected: bool, lost: int) -> None:
        self.cases[case] = {"clean": clean, "traceback": traceback, "unexpected": unexpected, "lost": lost}

    def summary(self) -> str:
        rows = self.cases.values()
        return (f"battery: {len(self.cases)} cases, {sum(r['clean'] for r in rows)} clean, "
                f"{sum(r['traceback'] for r in rows)} tracebacks, {sum(r['unexpected'] for r in rows)} "
                f"'unexpected', {sum(r['lost'] for r in rows)} files lost or overwritten")


TALLY = Tally()


@dataclass(frozen=True)
class Outcome:
    """The result of one command: exit code and what it printed."""

    rc: int
    out: str
    err: str

    @property
    def text(self) -> str:
        return self.out + self.err


def run_cli(argv: Sequence[str], *, env: dict[str, str] | None = None) -> Outcome:
    """``textsam ARGV`` in this process (``textsam.cli.main``), capturing stdout and stderr."""
    from textsam.cli import main

    out, err = io.StringIO(), io.StringIO()
    old = {k: os.environ.get(k) for k in (env or {})}
    os.environ.update(env or {})
    try:
        with redirect_stdout(out), redirect_stderr(err):
            rc = main([str(a) for a in argv])
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return Outcome(int(rc), out.getvalue(), err.getvalue())


def run_cli_process(argv: Sequence[str], *, timeout: float = 120, env: dict[str, str] | None = None,
                    cwd: Path | None = None) -> Outcome:
    """``python -m textsam ARGV`` in a child process (for hangs, signals and start-up checks)."""
    full_env = dict(os.environ, **(env or {}))
    proc = subprocess.run([sys.executable, "-m", "textsam", *map(str, argv)], capture_output=True, text=True,
                          timeout=timeout, env=full_env, cwd=cwd)
    return Outcome(proc.returncode, proc.stdout, proc.stderr)


def snapshot(*folders: Path) -> dict[Path, str]:
    """sha256 of every file under ``folders`` (to show later that nothing was lost or overwritten)."""
    found: dict[Path, str] = {}
    for folder in folders:
        if folder.is_file():
            found[folder] = hashlib.sha256(folder.read_bytes()).hexdigest()
            continue
        for p in folder.rglob("*") if folder.is_dir() else ():
            if p.is_file() and not p.is_symlink():
                found[p] = hashlib.sha256(p.read_bytes()).hexdigest()
    return found


def lost_files(before: dict[Path, str], may_change: Iterable[Path] = ()) -> list[str]:
    """Files of ``before`` that are gone or changed now (except those in ``may_change``)."""
    allowed = {Path(p) for p in may_change}
    lost = []
    for path, digest in before.items():
        if path in allowed:
            continue
        if not path.is_file() or hashlib.sha256(path.read_bytes()).hexdigest() != digest:
            lost.append(str(path))
    return lost


def has_traceback(text: str) -> bool:
    return "Traceback (most recent call last)" in text


def check(case: str, outcome: Outcome, *, rc: int, words: Sequence[str] = (), before: dict[Path, str] | None = None,
          may_change: Iterable[Path] = (), extra: Callable[[], None] | None = None) -> None:
    """Assert that a CLI case ended as expected, and record it in the totals.

    ``words`` must all appear (case-insensitive) in what the command printed; ``extra`` runs further
    assertions (files written, ...).
    """
    tb = has_traceback(outcome.text)
    unexpected = "unexpected" in outcome.err.lower()
    lost = lost_files(before or {}, may_change)
    clean = False
    try:
        assert not tb, f"traceback:\n{outcome.text[-3000:]}"
        assert not unexpected, f"'unexpected' error:\n{outcome.err[-2000:]}"
        assert not lost, f"files lost or overwritten: {lost}"
        assert outcome.rc == rc, f"exit code {outcome.rc}, expected {rc}:\n{outcome.text[-3000:]}"
        if rc == 2:
            errors = [ln for ln in outcome.err.splitlines() if ln.startswith("textsam: error:")]
            assert len(errors) == 1, f"a user error must be one 'textsam: error:' line, got:\n{outcome.err}"
        low = outcome.text.lower()
        missing = [w for w in words if w.lower() not in low]
        assert not missing, f"message lacks {missing}:\n{outcome.text[-3000:]}"
        if extra is not None:
            extra()
        clean = True
    finally:
        TALLY.add(case, clean=clean, traceback=tb, unexpected=unexpected, lost=len(lost))


def check_call(case: str, call: Callable[[], object], *, error: type[BaseException] | None = None,
               words: Sequence[str] = (), before: dict[Path, str] | None = None,
               extra: Callable[[object], None] | None = None) -> object:
    """Run a Python-API (or app-API) call: it must succeed (``error=None``) or raise ``error`` whose
    message holds ``words``; record the case. Returns what the call returned (or the exception)."""
    import traceback as tb_module

    result: object = None
    raised: BaseException | None = None
    try:
        result = call()
    except Exception as err:  # noqa: BLE001 - classified below
        raised = err
    message = "" if raised is None else str(raised)
    tb = has_traceback(message)
    unexpected = "unexpected" in message.lower()
    lost = lost_files(before or {})
    clean = False
    try:
        assert not tb and not unexpected, f"bad message: {message}"
        assert not lost, f"files lost or overwritten: {lost}"
        if error is None:
            assert raised is None, "".join(tb_module.format_exception(raised)) if raised else ""
        else:
            assert isinstance(raised, error), f"expected {error.__name__}, got {raised!r}"
            missing = [w for w in words if w.lower() not in message.lower()]
            assert not missing, f"message lacks {missing}: {message}"
        if extra is not None:
            extra(result if raised is None else raised)
        clean = True
    finally:
        TALLY.add(case, clean=clean, traceback=tb, unexpected=unexpected, lost=len(lost))
    return result if raised is None else raised
