"""Chaos: kill a search's driver at random moments, resume it, and check that nothing was lost or run twice.

    python -m benchmarks.chaos                                      # 20 kills, damaged files, 300-trial load line
    python -m benchmarks.chaos --kills 4 --load-trials 0 --hogs 0   # a quick look
    python -m benchmarks.chaos --kills 0 --load-trials 20           # damaged files and a short load line only
    python -m benchmarks.chaos --work-dir /tmp/chaos                # keep every search and log to read afterwards
    python -m benchmarks.chaos --sync-max 1      # sync kills only in the first sync
    python -m benchmarks.chaos driver --kill-at sync:N:K -- run CONFIG --num-cpus 2   # one driver, cut in a sync

Each scenario runs a tiny search (tiny BERT, 1-step trials; every third one two trials at a time, the rest one)
through the real CLI in its own process session and SIGKILLs it with everything it started (Ray's GCS, raylet,
workers), as a reboot would: either at a random time after its first trial started, or from inside, half-way
through Tune's N-th upload of its experiment state (K of its files copied, one by one, in a random order). The
resume may be killed too, early (during Ray's start and the restore) or late, and the next one (``resume_kills``);
then it is resumed until it exits 0.
``check`` then reads the trials table, the Optuna study and the adapters (``train/train-ID``); a trial the table
showed complete before a kill must still be there, not trained again. Tune saves its state every 10 s or more and at
the end (a 6-trial search syncs 3 or 4 times): a sync kill cuts one of the first 3 (``--sync-max``).

Then each of the files a resume restores from is truncated to half in a copy of a finished search, and every
command that reads it is run (classified: repaired, one line, traceback); and one long search of 1-step trials
measures whether the per-trial overhead and the driver's memory grow with the number of trials.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from benchmarks.chaos_search import check, complete_trials, make_search, read_table, tally, trial_times
from benchmarks.common import machine, table, write_result
from benchmarks.drivers import CUT_MARK, driver, kill_tree, start, tail, watch

RESUME_ATTEMPTS = 4


def _kill_run(config: Path, search_dir: Path, logs: Path, rng: random.Random, span_s: float, sync_max: int):
    """Step 1: start the search and kill it, by time or inside a sync. Returns (what happened, the kill or None)."""
    timeout = max(300.0, 10 * span_s)
    if rng.random() < 0.5:
        # K from 0-1 up to 0-32 files: a sync holds 3 files before the first trial ends, ~5 more per trial after.
        n, k = rng.randint(1, sync_max), rng.randint(0, 2 ** rng.randint(0, 5))
        d = start(["run", str(config), "--num-cpus", "2"], logs, "run", f"sync:{n}:{k}", rng.randrange(2**31))
        seen = watch(d, search_dir, timeout_s=timeout)
        cut = [ln for ln in tail(d.err, 400) if ln.startswith(CUT_MARK)]
        if not cut or seen["rc"] != -signal.SIGKILL:
            return seen, None
        seen["killed"] = True
        return seen, {"kind": "sync", "at": f"sync:{n}:{k}", "moment": cut[0][len("[chaos] ") :][:300]}
    delay = rng.uniform(0.0, span_s)
    d = start(["run", str(config), "--num-cpus", "2"], logs, "run")
    seen = watch(d, search_dir, kill_after=delay, from_first_trial=True, timeout_s=timeout)
    if not seen["killed"]:
        return seen, None
    return seen, {
        "kind": "time",
        "at": round(delay, 2),
        "moment": f"{delay:.1f} s after the first trial started",
    }


def scenario(
    root: Path,
    index: int,
    rng: random.Random,
    *,
    num_trials: int = 6,
    span_s: float = 20.0,
    resume_kill_p: float = 0.5,
    resume_kills: int = 1,
    sync_max: int = 3,
) -> dict[str, Any]:
    """One search, killed, resumed (maybe killed again), resumed until it exits 0, then checked.

    Args:
        span_s: seconds from an uninterrupted search's first trial to its end: the window a timed kill falls in.
        resume_kill_p: how often a resume is killed too (half of those early, 0.5-8 s after its start).
        resume_kills: how many resumes in a row may be killed (each with ``resume_kill_p``; a resume not killed
            ends the row): more kills a scenario, fewer processes a kill.
        sync_max: a kill in a sync cuts the N-th of Tune's experiment syncs, N from 1 to this (Tune saves its
            state every 10 s or more, and at the end).
    """
    name = f"s{index:03d}"
    # Every third search runs two trials at a time (two in flight at a kill), the rest one: a cheaper repetition
    # (one trial actor's start and imports, not two: 36 s of CPU a run here against 57 s).
    concurrency = 2 if index % 3 == 0 else 1
    config = make_search(root, num_trials, name=name, max_concurrent=concurrency)
    search_dir, logs = root / "results" / name, root / "logs" / name
    facts: dict[str, Any] = {"scenario": index, "search_dir": str(search_dir), "kills": [], "missed": []}
    facts["max_concurrent"] = concurrency
    facts["exits"] = exits = []
    t0 = time.monotonic()
    before: dict[str, tuple] = {}

    def record(seen: dict[str, Any], d_err: Path) -> None:
        if seen["rc"] not in (0, None) and not seen["killed"]:
            seen["stderr_tail"] = tail(d_err)
        exits.append(seen)

    seen, kill = _kill_run(config, search_dir, logs, rng, span_s, sync_max)
    record(seen, logs / "run.err")
    if kill is None:  # the search ended before the kill: checked as an uninterrupted one
        facts["missed"].append({"step": "run", "rc": seen["rc"]})
        problems = [] if seen["rc"] == 0 else [f"the run exited {seen['rc']} before it was killed"]
        problems += check(search_dir, num_trials)
        facts.update(problems=problems, lost=[], survived=0, tally=tally(search_dir))
        facts["wall_s"] = time.monotonic() - t0
        return facts
    before.update(complete_trials(search_dir))
    facts["kills"].append({**kill, "complete_before": len(before)})
    done = False
    for n in range(resume_kills):
        if rng.random() >= resume_kill_p:
            break
        early = rng.random() < 0.5
        delay = rng.uniform(0.5, 8.0) if early else rng.uniform(8.0, 8.0 + span_s)
        label = "resume-killed" if n == 0 else f"resume-killed-{n + 1}"
        d = start(["resume", str(search_dir), "--num-cpus", "2"], logs, label)
        seen = watch(d, search_dir, kill_after=delay, timeout_s=max(300.0, 10 * span_s))
        record(seen, d.err)
        if seen["killed"]:
            before.update(complete_trials(search_dir))
            moment = f"{delay:.1f} s after the resume started"
            kind = "resume-early" if early else "resume"
            kill = {"kind": kind, "at": round(delay, 2), "moment": moment, "complete_before": len(before)}
            facts["kills"].append(kill)
        else:
            facts["missed"].append({"step": "resume", "rc": seen["rc"]})
            done = seen["rc"] == 0
            break
    for attempt in range(RESUME_ATTEMPTS):
        if done:
            break
        d = start(["resume", str(search_dir), "--num-cpus", "2"], logs, f"resume-{attempt + 1}")
        seen = watch(d, search_dir, timeout_s=max(300.0, 10 * span_s))
        record(seen, d.err)
        done = seen["rc"] == 0
    problems = [] if done else [f"no resume exited 0 in {RESUME_ATTEMPTS} attempts"]
    problems += check(search_dir, num_trials)
    after = complete_trials(search_dir)
    # A trial the table showed complete before a kill: still there, same training time and adapter (not re-run).
    lost = sorted(i for i, row in before.items() if after.get(i) != row)
    if lost:
        problems.append(f"complete before a kill, then missing or trained again: {lost}")
    facts.update(problems=problems, lost=lost, tally=tally(search_dir), wall_s=time.monotonic() - t0)
    facts["survived"] = 0 if problems else len(facts["kills"])
    return facts


def reference(root: Path, num_trials: int) -> dict[str, Any]:
    """An uninterrupted search: it must pass the checks too, it times the window a kill falls in (from its first
    trial's start to its last trial's end, as the trials recorded them, plus 2 s for the table to say so), and it is
    the finished search the damaged-file cases start from."""
    config = make_search(root, num_trials, name="reference")
    search_dir = root / "results" / "reference"
    d = start(["run", str(config), "--num-cpus", "2"], root / "logs" / "reference", "run")
    seen = watch(d, search_dir, from_first_trial=True)
    if seen["rc"] != 0:
        seen["stderr_tail"] = tail(d.err)
    times = trial_times(search_dir)
    span = max(s + own for s, own in times) - times[0][0] + 2.0 if times else 20.0
    problems = check(search_dir, num_trials)
    print(f"[chaos] reference search: exit {seen['rc']}, its trials ran for {span - 2:.1f} s", flush=True)
    return {**seen, "search_dir": str(search_dir), "span_s": span, "problems": problems}


def scenarios(root: Path, kills: int, rng: random.Random, **kwargs: Any) -> list[dict[str, Any]]:
    """Scenarios until ``kills`` kills were tried (a missed kill is not one; at most ``3 * kills + 3`` tries)."""
    out: list[dict[str, Any]] = []
    while sum(len(s["kills"]) for s in out) < kills and len(out) < 3 * kills + 3:
        out.append(scenario(root, len(out), rng, **kwargs))
        s = out[-1]
        kinds = ", ".join(f"{k['kind']} {k['at']}" for k in s["kills"]) or "missed"
        print(f"[chaos] scenario {s['scenario']}: {kinds}; {len(s['problems'])} problem(s)", flush=True)
    return out


# Damaged files.

DAMAGED = ("trials.parquet", "optuna.db", "tune/experiment_state-*.json")
COMMANDS = ("show", "best", "report", "repair", "resume")


def _reads(search_dir: Path, pattern: str) -> bool:
    """Whether the (once damaged) file reads whole again."""
    import sqlite3

    try:
        if pattern == "trials.parquet":
            import pandas as pd

            pd.read_parquet(search_dir / pattern)
        elif pattern == "optuna.db":
            with contextlib.closing(sqlite3.connect(f"file:{search_dir / pattern}?mode=ro", uri=True)) as db:
                return db.execute("PRAGMA quick_check").fetchone()[0] == "ok"
        else:
            files = list(search_dir.glob(pattern))
            for path in files:
                json.loads(path.read_text())
            return bool(files)
    except Exception:
        return False
    return True


def damaged(root: Path, source: Path) -> list[dict[str, Any]]:
    """Each file a resume restores from, truncated to half in a copy of the finished search ``source``, against
    each command that reads results: ``repaired`` (exit 0, the file reads whole again), ``set aside`` (exit 0, the
    damaged file moved out of the way), ``untouched`` (exit 0, the command did not need it: still damaged), ``one
    line`` (a non-zero exit, one stderr line), ``traceback``, or ``other``. A resume that exits 0 has its search
    checked whole too (``problems``)."""
    cases = []
    for pattern in DAMAGED:
        for command in COMMANDS:
            case = f"{Path(pattern).name.split('-')[0].split('.')[0]}-{command}"
            target = root / "damaged" / case / source.name
            shutil.copytree(source, target)
            for path in target.glob(pattern):
                path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
            args = [command, str(target), *(["--num-cpus", "2"] if command == "resume" else [])]
            d = start(args, root / "damaged" / case, "command")
            seen = watch(d, target, timeout_s=600)
            err = [ln for ln in d.err.read_text(errors="replace").splitlines() if ln.strip()]
            if any("Traceback" in ln for ln in err):
                outcome = "traceback"
            elif seen["rc"] == 0 and _reads(target, pattern):
                outcome = "repaired"
            elif seen["rc"] == 0:
                outcome = "untouched" if list(target.glob(pattern)) else "set aside"
            elif len(err) == 1:
                outcome = "one line"
            else:
                outcome = "other"
            case_facts = {"file": pattern, "command": command, "rc": seen["rc"], "outcome": outcome}
            if seen["rc"] == 0 and command == "resume":
                case_facts["problems"] = check(target, len(read_table(source)))
            cases.append({**case_facts, "stderr_tail": err[-6:]})
            said = "; ".join(case_facts.get("problems", []))
            print(
                f"[chaos] damaged {pattern}, {command}: {outcome}{' - ' + said if said else ''}", flush=True
            )
    return cases


# The load line.


def _overhead(times: list[tuple[float, float]], concurrency: int) -> float:
    """Seconds per trial that were not the trial's own: its share of the window's wall time minus its own time."""
    span = max(s + own for s, own in times) - times[0][0]
    return span * concurrency / len(times) - sum(own for _, own in times) / len(times)


def load(root: Path, num_trials: int = 300, timeout_s: float = 3 * 3600) -> dict[str, Any]:
    """One search of ``num_trials`` 1-step trials to its end, the driver's resident memory sampled every second:
    whether the overhead per trial and the driver's memory grow as the trials add up."""
    config = make_search(root, num_trials, name="load", eval_size=6)
    search_dir = root / "results" / "load"
    d = start(["run", str(config), "--num-cpus", "2"], root / "logs" / "load", "run")
    samples = []  # (seconds, driver RSS bytes, complete trials)
    while d.proc.poll() is None and time.monotonic() - d.started < timeout_s:
        with contextlib.suppress(psutil.Error):
            rss = psutil.Process(d.proc.pid).memory_info().rss
            samples.append((time.monotonic() - d.started, rss, len(complete_trials(search_dir))))
        time.sleep(1.0)
    rc = d.proc.poll()
    kill_tree(d.proc)
    out: dict[str, Any] = {"trials": num_trials, "rc": rc if rc is not None else "timeout"}
    out["wall_s"] = time.monotonic() - d.started
    out["complete"] = len(complete_trials(search_dir))
    if rc != 0:
        out["stderr_tail"] = tail(d.err)
    times = trial_times(search_dir)
    concurrency = json.loads((search_dir / "run.json").read_text()).get("concurrency", 2) if times else 2
    window = min(30, len(times) // 2)
    if window:
        start_s, end_s = _overhead(times[:window], concurrency), _overhead(times[-window:], concurrency)
        out.update(window=window, overhead_start_s=start_s, overhead_end_s=end_s, concurrency=concurrency)
        out["overhead_ratio"] = end_s / start_s if start_s > 0 else None
    samples = [s for s in samples if s[1] > 0]  # an exiting driver reads 0
    for key, share in (("rss_10pct_mib", 0.1), ("rss_100pct_mib", 1.0)):
        at = [rss for _, rss, n in samples if n >= math.ceil(share * num_trials)]
        out[key] = at[0] / 2**20 if at else None
    out["rss_max_mib"] = max((rss for _, rss, _ in samples), default=0) / 2**20
    out["rss_samples"] = [(round(t, 1), round(rss / 2**20, 1), n) for t, rss, n in samples]
    return out


# Main.


def hogs(count: int) -> list[subprocess.Popen]:
    """Busy-loop processes beside the searches: a loaded machine stretches every window a kill can fall in."""
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]


def _markdown(rows: list[tuple[str, str]]) -> str:
    lines = ["| Reliability | |", "| --- | --- |"]
    return "\n".join(lines + [f"| {what} | {value} |" for what, value in rows])


def summary(result: dict[str, Any]) -> list[tuple[str, str]]:
    """The Reliability table's rows, from what was measured."""
    runs = result["scenarios"]
    tried = sum(len(s["kills"]) for s in runs)
    failed_exits = sum(e["rc"] not in (0, None) and not e["killed"] for s in runs for e in s["exits"])
    rows = [
        ("kills survived / tried", f"{sum(s['survived'] for s in runs)} / {tried}"),
        ("kills missed (the search ended first)", str(sum(len(s["missed"]) for s in runs))),
        ("scenarios with problems / run", f"{sum(bool(s['problems']) for s in runs)} / {len(runs)}"),
        ("driver exits other than 0 (not killed by the harness)", str(failed_exits)),
        ("trials lost (complete before a kill, missing or trained again after)",
         str(sum(len(s["lost"]) for s in runs))),
        ("duplicates (trial ids and Optuna trial numbers in the table)",
         str(sum(s["tally"]["duplicate_ids"] + s["tally"]["duplicate_optuna"] for s in runs))),
        ("uninterrupted reference search: problems", str(len(result["reference"]["problems"]))),
    ]  # fmt: skip
    cases = result["damaged"]
    if cases:
        named = ("repaired", "one line", "traceback")
        count = {
            o: sum(c["outcome"] == o for c in cases)
            for o in dict.fromkeys([*named, *(c["outcome"] for c in cases)])
        }
        rest = ", ".join(f"{n} {o}" for o, n in count.items() if o not in named and n)
        said = " / ".join(str(count[o]) for o in named) + f" of {len(cases)}" + (f" ({rest})" if rest else "")
        broken = sum(bool(c.get("problems")) for c in cases)
        rows.append(("damaged-file cases repaired / one line / traceback", said))
        rows.append(("damaged-file resumes that exited 0 with the search not whole", str(broken)))
    lo = result.get("load")
    if lo:
        nan = float("nan")
        ratio = lo.get("overhead_ratio") or nan
        rows += [
            ("load line: trials complete / asked", f"{lo['complete']} / {lo['trials']} (exit {lo['rc']}, {lo['wall_s']:.0f} s)"),
            ("load line: overhead per trial, first -> last trials (ratio)",
             f"{lo.get('overhead_start_s', nan):.2f} s -> {lo.get('overhead_end_s', nan):.2f} s ({ratio:.2f})"),
            ("load line: driver RSS at 10 % -> 100 % of trials complete (most)",
             f"{lo.get('rss_10pct_mib') or nan:.0f} MiB -> {lo.get('rss_100pct_mib') or nan:.0f} MiB "
             f"({lo['rss_max_mib']:.0f} MiB)"),
        ]  # fmt: skip
    return rows


def run(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    rng = random.Random(args.seed)
    result: dict[str, Any] = {
        "benchmark": "chaos",
        "seed": args.seed,
        "hogs": args.hogs,
        "machine": machine(),
    }
    busy = hogs(args.hogs)
    try:
        result["reference"] = ref = reference(root, args.trials)
        search_dir = Path(ref["search_dir"])
        runs = scenarios(
            root,
            args.kills,
            rng,
            num_trials=args.trials,
            span_s=ref["span_s"],
            sync_max=args.sync_max,
            resume_kills=args.resume_kills,
        )
        result["scenarios"] = runs
        result["damaged"] = damaged(root, search_dir) if ref["rc"] == 0 and args.damaged else []
        result["load"] = load(root, args.load_trials) if args.load_trials else None
    finally:
        for hog in busy:
            hog.kill()
            hog.wait()
    result["load_avg_1m_end"] = os.getloadavg()[0]
    return result


def _report(result: dict[str, Any]) -> None:
    kills = [
        {**k, "scenario": s["scenario"], "survived": bool(s["survived"]), "wall_s": s["wall_s"]}
        for s in result["scenarios"]
        for k in s["kills"]
    ]
    if kills:
        print(table(kills, ["scenario", "kind", "at", "complete_before", "survived", "wall_s"]))
    for s in [result["reference"], *result["scenarios"]]:
        for problem in s.get("problems", []):
            print(f"[chaos] {Path(s['search_dir']).name}: {problem}")
        for e in s.get("exits", [s]):
            if e.get("stderr_tail"):
                print(f"[chaos] {Path(s['search_dir']).name} {e['label']} exited {e['rc']}:")
                print("\n".join(f"    {ln}" for ln in e["stderr_tail"]))
    for c in result["damaged"]:
        if c["outcome"] in ("traceback", "other"):
            print(f"[chaos] damaged {c['file']}, {c['command']}: {c['outcome']} (exit {c['rc']}):")
            print("\n".join(f"    {ln}" for ln in c["stderr_tail"]))
    print()
    print(_markdown(summary(result)))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--kills", type=int, default=20, help="kills to try (a kill the search outran is missed)"
    )
    parser.add_argument("--trials", type=int, default=6, help="trials per killed search")
    parser.add_argument("--seed", type=int, default=0, help="the random moments and kinds of the kills")
    parser.add_argument(
        "--resume-kills", type=int, default=1, help="resumes in a row that may be killed (each half the time)"
    )
    parser.add_argument(
        "--sync-max", type=int, default=3, help="a kill in a sync cuts one of the first this many syncs"
    )
    parser.add_argument("--load-trials", type=int, default=300, help="trials of the load line (0: skip it)")
    parser.add_argument("--hogs", type=int, default=1, help="busy-loop processes running beside the searches")
    parser.add_argument(
        "--damaged", action=argparse.BooleanOptionalAction, default=True, help="damaged files"
    )
    parser.add_argument("--out", help="the JSON file to write (default: benchmarks/results/chaos.json)")
    parser.add_argument("--work-dir", help="where the searches and logs go, kept (default: a temporary one)")
    args = parser.parse_args(argv)
    with contextlib.ExitStack() as stack:
        root = Path(args.work_dir or stack.enter_context(tempfile.TemporaryDirectory(prefix="chaos-")))
        result = run(args, root.resolve())
    out = Path(args.out) if args.out else None
    path = write_result(out.stem if out else "chaos", result, out.parent if out else None)
    _report(result)
    print(f"\nwritten to {path}")
    return result


if __name__ == "__main__":
    if sys.argv[1:2] == ["driver"]:  # one driver, cut in a sync (benchmarks.drivers)
        sys.exit(driver(sys.argv[2:]))
    main()
