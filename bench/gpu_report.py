"""The GPU check's machinery: stages, the deadline, and a report written after every stage.

A stage is a function ``stage(ctx, st)`` that records checks and figures on ``st``
(a :class:`Stage`). :func:`run_stages` runs the chosen stages in order and rewrites
``gpu_check.json`` and ``gpu_check.md`` before the first and after every stage, each file
replaced in one rename, so a run that is cut off (a job's time limit, a kill) still
leaves a report that parses and says how far it got.

How a stage can end:

- ``passed`` / ``failed``: it ran; ``failed`` when one of its checks failed;
- ``error``: it raised (the traceback is in the report); the next stage still runs;
- ``skipped``: it cannot run here (:class:`Skipped`, e.g. NCCL not installed);
- ``cut off: deadline`` / ``cut off: terminated``: the deadline passed or SIGTERM (or
  Ctrl-C) came while it ran; the checks it made so far are kept;
- ``skipped: deadline`` / ``skipped: terminated``: it had not started by then.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DONE = ("passed", "skipped")                  # the stage statuses of a passing check


class Skipped(Exception):
    """A stage that cannot run here; the message says why."""


class CutOff(BaseException):
    """The check must stop now (the deadline passed, or SIGTERM / Ctrl-C came). A
    BaseException, so that no stage's ``except Exception`` can swallow it."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason                  # "deadline" or "terminated"


class Deadline:
    """The time by which every stage must have ended, ``seconds`` from now."""

    def __init__(self, seconds: float, clock=time.monotonic):
        self.seconds = seconds
        self._clock = clock
        self._end = clock() + seconds

    def left(self) -> float:
        return self._end - self._clock()

    def check(self) -> None:
        """Between the steps of an in-process stage: CutOff once the deadline passed."""
        if self.left() <= 0:
            raise CutOff("deadline")

    def bound(self, limit: float) -> float:
        """A subprocess's timeout: its own ``limit``, or less if the deadline is nearer."""
        self.check()
        return min(limit, self.left())


@dataclass
class Stage:
    """One stage's outcome: checks (name, ok, detail), figures, skipped parts."""
    name: str
    checks: list = field(default_factory=list)
    figures: dict = field(default_factory=dict)
    skipped: dict = field(default_factory=dict)
    status: str = "not run yet"
    error: str = ""                           # why it was skipped, or its traceback
    seconds: float = 0.0

    def check(self, name: str, ok: bool, detail="") -> bool:
        self.checks.append({"name": name, "ok": bool(ok), "detail": str(detail)})
        return bool(ok)

    def skip(self, part: str, reason: str) -> None:
        self.skipped[part] = reason


@dataclass
class Context:
    """What every stage is given: the backend under test, the report folder, the sizes
    (``gpu_check.GPU`` or ``gpu_check.DRY``) and the deadline."""
    backend: str                              # "cupy", or "numpy" for the dry run
    out: Path
    sizes: object
    deadline: Deadline

    @property
    def gpu(self) -> bool:
        return self.backend == "cupy"

    def env(self, **extra) -> dict:
        return {**os.environ, "BRAINLIKE_BACKEND": self.backend, **extra}

    def gpu_only(self, stage: Stage, part: str) -> bool:
        """True on the GPU; in the dry run, records ``part`` as skipped."""
        if not self.gpu:
            stage.skip(part, "GPU only: this is the --backend numpy dry run")
        return self.gpu

    def run(self, command: list, limit: float, env: dict | None = None):
        """``command`` in the repository, on this context's backend, for at most ``limit``
        seconds or until the deadline, whichever is nearer (CutOff at the deadline; the
        command is killed either way)."""
        timeout = self.deadline.bound(limit)
        try:
            return subprocess.run(list(map(str, command)), cwd=ROOT, env=env or self.env(),
                                  capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            if timeout < limit:
                raise CutOff("deadline") from None
            raise

    def run_module(self, args: list, limit: float, **env):
        """``python -m <args>`` (see :meth:`run`)."""
        return self.run([sys.executable, "-m", *args], limit, self.env(**env))


def tail(text: str, lines: int = 5) -> str:
    return " | ".join(text.strip().splitlines()[-lines:])


def errors(done: subprocess.CompletedProcess) -> str:
    """The end of a failed command's stderr, for the report ("" when it succeeded)."""
    return tail(done.stderr) if done.returncode else ""


# ---- running the stages ----------------------------------------------------------------
def run_stage(ctx: Context, fn, st: Stage) -> None:
    """Run one stage; its status says how it ended. CutOff propagates after the status
    is set, so the caller stops."""
    start = time.perf_counter()
    try:
        fn(ctx, st)
        st.status = "passed" if all(c["ok"] for c in st.checks) else "failed"
    except Skipped as exc:
        st.status, st.error = "skipped", str(exc)
    except CutOff as exc:
        st.status = f"cut off: {exc.reason}"
        raise
    except KeyboardInterrupt:
        st.status = "cut off: terminated"
        raise CutOff("terminated") from None
    except Exception:                         # recorded; the next stage still runs
        st.status, st.error = "error", traceback.format_exc(limit=-6)
    finally:
        st.seconds = round(time.perf_counter() - start, 1)
        print(f"[{st.seconds:6.1f} s] {st.name}: {st.status}", flush=True)


def run_stages(ctx: Context, stages: list, write) -> list[Stage]:
    """Run ``stages`` ([(name, function)]) in order, calling ``write(results)`` before
    the first and after each one. Once the deadline has passed or SIGTERM came, the
    remaining stages are marked skipped."""
    results = [Stage(name) for name, _ in stages]
    write(results)
    with Termination() as termination:
        for (_, fn), st in zip(stages, results):
            if termination.came:
                st.status = "skipped: terminated"
            elif ctx.deadline.left() <= 0:
                st.status = "skipped: deadline"
            else:
                termination.run(ctx, fn, st)
            write(results)
    return results


class Termination:
    """SIGTERM (a job's time limit) raises CutOff("terminated") while a stage runs, and
    is only noted between stages, so that a report is never cut off half written."""

    def __init__(self):
        self.came = False
        self._in_stage = False

    def __enter__(self):
        self._previous = signal.signal(signal.SIGTERM, self._handler)
        return self

    def __exit__(self, *exc):
        signal.signal(signal.SIGTERM, self._previous)

    def _handler(self, signum, frame):
        self.came = True
        if self._in_stage:
            raise CutOff("terminated")

    def run(self, ctx: Context, fn, st: Stage) -> None:
        self._in_stage = True
        try:
            run_stage(ctx, fn, st)
        except CutOff as exc:                 # the stage's status says so
            self.came = self.came or exc.reason == "terminated"
        finally:
            self._in_stage = False


def verdict(results: list[Stage]) -> str:
    statuses = [st.status for st in results]
    if any(s in ("failed", "error") for s in statuses):
        return "FAILED"
    return "passed" if all(s in DONE for s in statuses) else "INCOMPLETE"


# ---- the report ------------------------------------------------------------------------
def report(ctx: Context, results: list[Stage], command: str, seconds: float) -> dict:
    return {"backend": ctx.backend, "verdict": verdict(results), "command": command,
            "deadline_s": ctx.deadline.seconds, "seconds": round(seconds, 1),
            "stages": [dataclasses.asdict(st) for st in results]}


def write_report(out: Path, rep: dict) -> None:
    """``gpu_check.json`` and ``gpu_check.md`` in ``out``, each replaced in one rename."""
    for name, text in (("gpu_check.json", json.dumps(rep, indent=1, default=str) + "\n"),
                       ("gpu_check.md", markdown(rep))):
        temporary = out / f".{name}.tmp"
        temporary.write_text(text)
        os.replace(temporary, out / name)


def markdown(rep: dict) -> str:
    lines = [f"# GPU check ({rep['backend']}): {rep['verdict']}", "",
             f"`{rep['command']}`, {rep['seconds']} s (deadline {rep['deadline_s']} s)", ""]
    for st in rep["stages"]:
        lines += [f"## {st['name']}: {st['status']} ({st['seconds']} s)", ""]
        lines += [f"- {'ok' if c['ok'] else '**FAILED**'}: {c['name']}"
                  + (f" ({c['detail']})" if c["detail"] else "") for c in st["checks"]]
        lines += [f"- skipped: {part}: {why}" for part, why in st["skipped"].items()]
        lines += [f"- {k}: `{json.dumps(v, default=str)}`" for k, v in st["figures"].items()]
        if st["status"] == "skipped":
            lines.append(f"- skipped: {st['error']}")
        elif st["error"]:
            lines += ["", "```", st["error"].rstrip(), "```"]
        lines.append("")
    return "\n".join(lines)
