"""Mutation testing of one module with cosmic-ray, in minutes rather than hours.

    python tests/mutation/run.py optim [--stride N]     # in a clone made for it

cosmic-ray edits the module in place, so this refuses to run in a checkout with changes
(make a clone: docs/mutation-testing.md). Each mutant runs only the tests of the module's
selection that executed the mutated code (pytest-testmon's data, collected once on the
unmutated clone), so most mutants cost a second or two; the survivors then run again
with the whole selection (a test that runs the trainer in a subprocess is invisible to
testmon). Mutants inside type annotations are not run: every module starts with
``from __future__ import annotations``, so no annotation is ever evaluated (equivalent).
Results: ``mutation/MODULE.sqlite`` under the clone (``cr-report --show-diff`` reads it).

The test command cosmic-ray runs for each mutant is this file again: ``run.py --test
MODULE [--whole]``.
"""

from __future__ import annotations

import argparse
import ast
import os
import subprocess
import sys
from pathlib import Path

# each module, with the tests that exercise it (a `-k` narrows a file to its tests)
MODULES = {
    "attention": ("backends/reference/attention.py", [
        "tests/test_attention_op.py", "-k",
        "(test_definition or shape or no_kept or nan_score or above_256) and not numba"]),
    "optim": ("brainlike_np/optim.py", [
        "tests/test_optim.py", "tests/test_checkpoint_crafted.py", "tests/test_schedules.py",
        "-k", "test_optim or optimizer or test_schedules"]),
    "layers": ("brainlike_np/layers.py",     # (testmon needs a -k without pytest's cache)
               ["tests/test_layers.py", "-k", "test_layers"]),
    "checkpoint": ("brainlike_np/checkpoint.py", [
        "tests/test_checkpoint_io.py", "tests/test_checkpoint_crafted.py", "tests/test_faults.py",
        "tests/test_resume_records.py", "tests/test_kept_checkpoints.py",
        "tests/test_init_from.py", "-k",
        "(test_checkpoint_io or test_checkpoint_crafted or damaged_checkpoint or lone_npy or "
        "flipped_bytes or test_resume_records or test_kept_checkpoints or test_init_from) "
        "and not 100000 and not torch and not jax and not strict"]),
    "data": ("brainlike_np/data.py", [
        "tests/test_data.py", "tests/test_data_checks.py", "tests/test_token_files.py",
        "tests/test_token_dtypes.py", "tests/test_evaluate.py", "-k",
        "not 50_gb and not baselines_are_sampled and not sample_every and not torch "
        "and not jax and not strict and not cupy"]),
    "brainlike": ("brainlike_np/models/brainlike.py", [
        "tests/test_brainlike.py", "tests/test_models.py", "-k",
        "not array_api_strict and not cupy and not recomputation_keeps_less and "
        "(test_brainlike or (brainlike and (supervised or (numpy and (gradients_match or "
        "give_the_default or next_logits)))))"]),
}
PYTEST = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider"]
NO_TESTS_COLLECTED = 5


def testmon_file(module: str) -> Path:
    return Path("mutation", f"{module}.testmondata").resolve()


def run_tests(module: str, whole: bool) -> int:
    """The test command of one mutant: 0 if it survived."""
    tests = MODULES[module][1]
    if whole:
        return subprocess.call(PYTEST + tests)
    env = dict(os.environ, TESTMON_DATAFILE=str(testmon_file(module)))
    code = subprocess.call(PYTEST + ["--testmon-nocollect", "--testmon-forceselect"] + tests,
                           env=env)
    return 0 if code == NO_TESTS_COLLECTED else code       # no test runs that code


def annotation_spans(path: str) -> list:
    """(start, end) of every annotation of the module's source."""
    text = Path(path).read_text()
    if "from __future__ import annotations" not in text:
        return []                       # annotations are evaluated: mutants are real
    spans = []
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.returns:
            spans.append(node.returns)
        elif isinstance(node, (ast.arg, ast.AnnAssign)) and node.annotation:
            spans.append(node.annotation)
    return [((a.lineno, a.col_offset), (a.end_lineno, a.end_col_offset)) for a in spans]


def prepare(db_path: Path, source: str, stride: int, only: list) -> None:
    """Mark skipped: mutants outside the functions or classes named in ``only`` (if
    any), mutants inside annotations, and all but every ``stride``-th of the others (in
    their order in the file)."""
    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import WorkerOutcome, WorkResult
    spans = annotation_spans(source)
    with use_db(str(db_path), WorkDB.Mode.open) as db:
        items = sorted(db.pending_work_items, key=lambda w: (
            tuple(w.mutations[0].start_pos), w.mutations[0].operator_name,
            w.mutations[0].occurrence))
        outside = [w for w in items if only and w.mutations[0].definition_name not in only]
        items = [w for w in items if w not in outside]
        inside = [w for w in items
                  if any(s <= tuple(w.mutations[0].start_pos) < e for s, e in spans)]
        rest = [w for w in items if w not in inside]
        for reason, skipped in (("not chosen", outside), ("annotation", inside),
                                ("sampled out", [w for i, w in enumerate(rest) if i % stride])):
            db.set_multiple_results([w.job_id for w in skipped], WorkResult(
                worker_outcome=WorkerOutcome.SKIPPED, output=reason))


def forget_survivors(db_path: Path) -> int:
    """Make the survivors pending again; -> their number."""
    import sqlite3
    with sqlite3.connect(db_path) as db:
        return db.execute("delete from work_results where test_outcome = 'SURVIVED'").rowcount


def write_config(module: str, whole: bool) -> Path:
    path = Path("mutation", f"{module}{'-whole' if whole else ''}.toml")
    command = f"{sys.executable} tests/mutation/run.py --test {module}" + \
        (" --whole" if whole else "")
    path.write_text("\n".join([
        "[cosmic-ray]", f'module-path = "{MODULES[module][0]}"', "timeout = 300.0",
        "excluded-modules = []", f'test-command = "{command}"',
        "[cosmic-ray.distributor]", 'name = "local"', ""]))
    return path


def cosmic_ray(*args) -> None:
    subprocess.run([sys.executable, "-m", "cosmic_ray.cli", *map(str, args)], check=True)


def mutate(module: str, stride: int, only: list) -> None:
    if subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                      capture_output=True, text=True, check=True).stdout:
        sys.exit("error: this checkout has changes, and cosmic-ray edits the module in "
                 "place; run it in a clone made for it (docs/mutation-testing.md)")
    Path("mutation").mkdir(exist_ok=True)
    source, tests = MODULES[module]
    db = Path("mutation", f"{module}.sqlite")
    db.unlink(missing_ok=True)
    testmon_file(module).unlink(missing_ok=True)
    collect = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--testmon"] + tests,
        env=dict(os.environ, TESTMON_DATAFILE=str(testmon_file(module))),
        capture_output=True, text=True)
    if collect.returncode:
        sys.exit(collect.stdout[-3000:] + "\nerror: the selection fails on the unmutated "
                 "module (above); mutants can only be judged by tests that pass")
    cosmic_ray("init", write_config(module, whole=False), db)
    prepare(db, source, stride, only)
    cosmic_ray("exec", write_config(module, whole=False), db)
    print(f"{forget_survivors(db)} survivors run again with the whole selection")
    cosmic_ray("exec", write_config(module, whole=True), db)
    report(db)


def report(db_path: Path) -> None:
    """The counts of each outcome, then each survivor as ``line: old -> new``."""
    import sqlite3
    with sqlite3.connect(db_path) as db:
        counts = db.execute("select coalesce(test_outcome, worker_outcome || ' ' || output), "
                            "count(*) from work_results group by 1").fetchall()
        survivors = db.execute(
            "select m.start_pos_row, r.diff from work_results r join mutation_specs m "
            "on m.job_id = r.job_id where r.test_outcome = 'SURVIVED' order by 1").fetchall()
    print(", ".join(f"{n} {outcome.lower()}" for outcome, n in sorted(counts)))
    for line, diff in survivors:
        old, new = ([d[1:].strip() for d in diff.splitlines()
                     if d.startswith(sign) and not d.startswith(sign * 3)] for sign in "-+")
        print(f"{line}: {' / '.join(old)}  ->  {' / '.join(new)}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("module", choices=sorted(MODULES))
    parser.add_argument("--stride", type=int, default=1,
                        help="run every N-th mutant only (default: all)")
    parser.add_argument("--only", nargs="+", default=[], metavar="NAME",
                        help="mutate only these functions or classes (e.g. the ones you "
                             "changed)")
    parser.add_argument("--report", action="store_true",
                        help="print the counts and survivors of the last run only")
    parser.add_argument("--test", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--whole", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.test:
        sys.exit(run_tests(args.module, args.whole))
    if args.report:
        return report(Path("mutation", f"{args.module}.sqlite"))
    if args.stride < 1:
        parser.error(f"--stride must be at least 1, got {args.stride}")
    mutate(args.module, args.stride, args.only)


if __name__ == "__main__":
    main()
