"""Measure distcomm's performance goals, each as a ratio taken side by side in one run.

    python benchmarks/goals.py            # about two minutes on 2 cores
    python benchmarks/goals.py --suite    # also time the whole test suite (pytest -n auto)

Every goal compares two ways of doing the same thing, alternating call by call on the
same ranks at the same moment, and reports medians: the machine's noise falls on both
sides alike. Multi-rank goals run on 2 local Gloo ranks (the price of the promise on 2
and 4). Each ratio is the median of three repetitions.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import cases

from distcomm.testing import World

ROOT = Path(__file__).resolve().parents[1]


def repeat(world: World, fn, *args, times: int = 3) -> list[dict[str, float]]:  # type: ignore[no-untyped-def]
    return [world.run(fn, *args, timeout=600)[0] for _ in range(times)]


def ratio(runs: list[dict[str, float]], numerator: str, denominator: str) -> float:
    return statistics.median(run[numerator] / run[denominator] for run in runs)


def line(goal: str, measured: float, target: str, ok: bool, detail: str) -> str:
    return f"| {goal} | {measured:.2f}x | {target} | {'met' if ok else 'NOT met'} | {detail} |"


def hot_path_goals(world: World, report) -> None:  # type: ignore[no-untyped-def]
    """The training-loop paths against the few lines a user would write instead, on ``world``'s ranks."""
    n = world.world_size
    where = f"{n} Gloo rank{'s' if n > 1 else ''}"
    for op, size, leaves, calls, label, limit in (
        ("dict_all_reduce", 4, 50, 400, "dict all_reduce of 50 scalars / torch's flatten idiom", 1.2),
        ("dict_all_reduce", 16384, 200, 100, "dict all_reduce of 200 x 4096 floats / torch's flatten idiom", 1.2),
        ("reduce_dict", 4, 50, 400, "reduce_dict of 50 scalar tensors / stack + all_reduce + tolist", 1.3),
        ("all_gather_same", 2**20, 0, 100, "all_gather(same_shape=True, out=) of 1 MiB / all_gather_into_tensor", 1.1),
    ):
        runs = repeat(world, cases.bench_case, op, size, calls, "cpu", leaves)
        r = ratio(runs, "distcomm", "raw")
        detail = f"{cases.median_of(runs, 'distcomm') * 1e6:.0f} us vs {cases.median_of(runs, 'raw') * 1e6:.0f} us"
        if "distcomm, new buffer" in runs[0]:
            detail += f"; {ratio(runs, 'distcomm, new buffer', 'raw'):.2f}x without out="
        report(line(f"{label}, {where}", r, f"<= {limit}", r <= limit, detail))


PROMISE_GOALS = {  # the checked call / the raw idiom, at most (issue: "the price of the promise")
    "barrier": 1.15,
    "broadcast 4 B": 1.4,
    "broadcast 1 MiB": 1.3,
    "all_gather 1 MiB": 1.3,
    "dict of 50 scalars, mean": 1.2,
    "dict of 200 x 4096 floats, mean": 1.2,
    "reduce_dict of 50 scalars": 1.3,
}
PROMISE_IDIOMS = {
    "barrier": "dist.barrier",
    "broadcast 4 B": "dist.broadcast",
    "broadcast 1 MiB": "dist.broadcast",
    "all_gather 1 MiB": "dist.all_gather into buffers of known shape",
    "dict of 50 scalars, mean": "torch's flatten idiom",
    "dict of 200 x 4096 floats, mean": "torch's flatten idiom",
    "reduce_dict of 50 scalars": "stack + all_reduce + tolist",
}


def promise_goals(report) -> None:  # type: ignore[no-untyped-def]
    """What the promise costs: each checked call against the raw idiom that checks nothing, on 2 and
    4 Gloo ranks, and how the ratio grows from 2 to 4 ranks (the check must not grow)."""
    ratios: dict[tuple[int, str], float] = {}
    for ranks in (2, 4):
        with World(ranks, timeout=120, call_timeout=900) as world:
            for case, calls in cases.PROMISE_CASES.items():
                runs = repeat(world, cases.promise_price, case, calls)
                r = ratios[ranks, case] = ratio(runs, "distcomm", "raw")
                limit = PROMISE_GOALS[case]
                floor = ratio(runs, "floor", "raw")
                detail = (
                    f"{cases.median_of(runs, 'distcomm') * 1e6:.0f} us vs {cases.median_of(runs, 'raw') * 1e6:.0f} us; "
                    f"floor of a separate check {floor:.2f}x ({cases.median_of(runs, 'floor') * 1e6:.0f} us)"
                )
                report(line(f"{case} / {PROMISE_IDIOMS[case]}, {ranks} Gloo ranks", r, f"<= {limit}", r <= limit, detail))
    for case in cases.PROMISE_CASES:
        growth = ratios[4, case] / ratios[2, case]
        detail = f"{ratios[4, case]:.2f}x at 4 ranks, {ratios[2, case]:.2f}x at 2"
        report(line(f"{case}: ratio at 4 ranks / at 2 ranks", growth, "<= 1.25", growth <= 1.25, detail))


def exchange_goals(world: World, report) -> None:  # type: ignore[no-untyped-def]
    """reduce_scatter, uneven all_to_all and send/recv against raw torch.distributed given every size by hand."""
    for op, size, limit, label in (
        ("reduce_scatter", 2**20, 1.1, "reduce_scatter of 1 MiB / reduce_scatter_single"),
        ("reduce_scatter", 4 * 2**20, 1.1, "reduce_scatter of 4 MiB / reduce_scatter_single"),
        ("all_to_all_uneven", 2**20, 1.5, "uneven all_to_all of 1 MiB, sizes exchanged / all_to_all_single given the sizes"),
        ("all_to_all_uneven", 4 * 2**20, 1.5, "uneven all_to_all of 4 MiB, sizes exchanged / all_to_all_single given the sizes"),
        ("send_recv", 2**20, 1.1, "send/recv ping-pong of 1 MiB, no shape given / send+recv into a known buffer"),
        ("send_recv", 4 * 2**20, 1.1, "send/recv ping-pong of 4 MiB, no shape given / send+recv into a known buffer"),
    ):
        runs = repeat(world, cases.bench_case, op, size, 60, "cpu", 0)
        r = ratio(runs, "distcomm", "raw")
        detail = f"{cases.median_of(runs, 'distcomm') * 1e6:.0f} us vs {cases.median_of(runs, 'raw') * 1e6:.0f} us"
        report(line(f"{label}, 2 Gloo ranks", r, f"<= {limit}", r <= limit, detail))


def shrink_goal(report) -> None:  # type: ignore[no-untyped-def]
    """From a rank's death to the first collective on the survivors' communicator, 4 Gloo ranks."""
    import tempfile

    timeout = 2.0
    worst = []
    for _ in range(3):
        with tempfile.TemporaryDirectory() as tmp, World(4, timeout=timeout, call_timeout=120) as world:
            outcomes = world.run_outcomes(cases.death_to_new_communicator, f"{tmp}/death")
            worst.append(max(o.value for o in outcomes if o.ok and o.value is not None))
    seconds = statistics.median(worst)
    report(
        f"| rank killed (SIGKILL) to first collective on the survivors' communicator, 4 Gloo ranks, timeout {timeout:g} s | "
        f"{seconds:.2f} s | <= timeout + 2 s | {'met' if seconds <= timeout + 2 else 'NOT met'} | slowest survivor, median of 3 jobs |"
    )


def rejoin_goals(report) -> None:  # type: ignore[no-untyped-def]
    """Under ``python -m distcomm run`` (4 Gloo workers, timeout 2 s, warm start), worker 2 is
    SIGKILLed mid-step, 3 jobs: the time from its death to the survivors' next step (the shrink
    done), and from its replacement's start to its first step in the job, read from the times
    the example's workers print."""
    deaths, joins = [], []
    example = ROOT / "examples" / "resilient_training.py"
    for _ in range(3):
        done = subprocess.run([sys.executable, str(example), "--steps", "10", "--kill-step", "4"], capture_output=True, text=True, timeout=300,
                              env={**os.environ, "DISTCOMM_EXAMPLE_TIMES": "1"})
        # The workers share one stdout, so their lines may run together: read the marks, not the lines.
        died = [float(t) for t in re.findall(r"TIMING died (\d+\.\d{6})", done.stdout)]
        shrank = [float(t) for t in re.findall(r"TIMING shrank (\d+\.\d{6})", done.stdout)]
        started = [(float(a), float(b)) for a, b in re.findall(r"TIMING replacement (\d+\.\d{6}) (\d+\.\d{6})", done.stdout)]
        if done.returncode != 0 or not (died and shrank and started):
            report(f"| rejoin under distcomm run | failed | - | NOT met | {done.stderr[-300:]!r} |")
            return
        deaths.append(max(shrank) - died[0])
        joins.append(started[0][1] - started[0][0])
    death, join = statistics.median(deaths), statistics.median(joins)
    report(f"| worker SIGKILLed to the survivors' next step, distcomm run, 4 Gloo workers, timeout 2 s | {death:.2f} s | <= timeout + 2 s | "
           f"{'met' if death <= 4 else 'NOT met'} | slowest survivor, median of 3 jobs ({', '.join(f'{d:.2f}' for d in deaths)}) |")  # fmt: skip
    report(f"| replacement started to its first step in the job, same jobs | {join:.2f} s | measured | - | "
           f"median of 3 ({', '.join(f'{j:.2f}' for j in joins)}); it waits for the survivors' shrink, then joins at their next step |")  # fmt: skip


def single_process_goals(report) -> None:  # type: ignore[no-untyped-def]
    """The facade's single-process shortcut, and setup()+cleanup(), against what they replace."""
    runs = [cases.hot_path(2000) for _ in range(3)]
    r = ratio(runs, "distutils", "old style")
    detail = f"{cases.median_of(runs, 'distutils') * 1e9:.0f} ns vs {cases.median_of(runs, 'old style') * 1e9:.0f} ns per get_rank()+all_reduce(float)"
    report(line("single process: facade / old style of asking torch.distributed", r, "<= 1.0", r <= 1.0, detail))

    runs = [cases.setup_cleanup(30) for _ in range(3)]
    r = ratio(runs, "distcomm setup+cleanup", "raw init+destroy")
    detail = f"{cases.median_of(runs, 'distcomm setup+cleanup') * 1e3:.2f} ms vs {cases.median_of(runs, 'raw init+destroy') * 1e3:.2f} ms"
    report(line("setup()+cleanup() of one rank / raw init+destroy", r, "<= 1.5", r <= 1.5, detail))


def single_tensor_overhead(report) -> None:  # type: ignore[no-untyped-def]
    """Added time per single-tensor all_reduce, on torch's fake process group: its collectives do
    nothing, so what remains is the Python each way runs. (On one Gloo rank a call waits tens of
    microseconds for Gloo's worker thread, and that wake-up jitters by more than the goal.)

    The API's own cost is taken with the flight recorder off; the recorder, on by default,
    is a row of its own. The facade's own cost is what it adds to the object API."""
    runs = [cases.overhead_on_fake_group(20000) for _ in range(3)]
    raw, api = cases.median_of(runs, "raw"), cases.median_of(runs, "distcomm unrecorded")
    facade = cases.median_of(runs, "facade") - cases.median_of(runs, "distcomm")  # both recorded
    recorder = cases.median_of(runs, "distcomm") - api
    for name, added, limit, detail in (
        ("object API", api - raw, 1.0, f"{api * 1e6:.2f} us vs raw {raw * 1e6:.2f} us"),
        ("facade", api - raw + facade, 1.5, f"the object API's cost plus {facade * 1e6:.2f} us of its own"),
        ("flight recorder (on by default)", recorder, 1.0, f"{cases.median_of(runs, 'distcomm') * 1e6:.2f} us with it, {api * 1e6:.2f} us without"),
    ):
        added *= 1e6
        report(f"| added time per single-tensor all_reduce, {name}, 1 rank (fake group) | {added:+.2f} us | <= {limit} us | "
               f"{'met' if added <= limit else 'NOT met'} | {detail} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", action="store_true", help="also time the whole test suite")
    args = parser.parse_args()
    rows: list[str] = []

    def report(row: str) -> None:
        rows.append(row)
        print(row, flush=True)

    print("| goal | measured | target | status | medians |")
    print("| --- | --- | --- | --- | --- |")
    promise_goals(report)
    with World(2, timeout=120, call_timeout=900) as world:
        for size, limit, calls in ((2**20, 1.05, 400), (4, 1.10, 3000)):
            runs = repeat(world, cases.all_reduce_overhead, size, calls)
            label = "1 MiB" if size > 4 else "4 B"
            for variant in ("distcomm", "facade"):
                r = ratio(runs, variant, "raw")
                detail = f"{cases.median_of(runs, variant) * 1e6:.1f} us vs raw {cases.median_of(runs, 'raw') * 1e6:.1f} us"
                name = "object API" if variant == "distcomm" else "facade"
                report(line(f"all_reduce {label}, {name} / raw torch.distributed", r, f"<= {limit}", r <= limit, detail))

        runs = repeat(world, cases.reduce_dict_vs_calls, 200)
        r = ratio(runs, "50 all_reduce", "reduce_dict")
        raw = ratio(runs, "50 raw all_reduce", "reduce_dict")
        detail = f"{cases.median_of(runs, 'reduce_dict') * 1e6:.0f} us vs {cases.median_of(runs, '50 all_reduce') * 1e6:.0f} us ({raw:.1f}x vs 50 raw calls)"
        report(line("reduce_dict of 50 scalars, speed-up over 50 all_reduce", r, ">= 10", r >= 10, detail))

        runs = repeat(world, cases.agreement_cost, 300)
        r = ratio(runs, "reduce_dict", "by hand + header")
        alone = ratio(runs, "reduce_dict", "by hand")
        detail = (
            f"{cases.median_of(runs, 'reduce_dict') * 1e6:.0f} us vs {cases.median_of(runs, 'by hand + header') * 1e6:.0f} us "
            f"by hand with one small all_gather; {alone:.2f}x ({cases.median_of(runs, 'by hand') * 1e6:.0f} us) without it"
        )
        report(line("reduce_dict of 50 floats (ranks agree on keys and kinds) / by hand + one header", r, "<= 1.3", r <= 1.3, detail))

        runs = repeat(world, cases.uneven_gather_vs_object, 30)
        r = ratio(runs, "torch all_gather_object", "distcomm all_gather")
        ceiling = ratio(runs, "torch all_gather_object", "raw equal-size all_gather")
        detail = (
            f"{cases.median_of(runs, 'distcomm all_gather') * 1e3:.2f} ms vs {cases.median_of(runs, 'torch all_gather_object') * 1e3:.2f} ms; "
            f"raw equal-size all_gather alone takes {cases.median_of(runs, 'raw equal-size all_gather') * 1e3:.2f} ms (ceiling {ceiling:.2f}x)"
        )
        report(line("uneven all_gather of ~3 MB, speed-up over all_gather_object", r, ">= 3", r >= 3, detail))

        runs = repeat(world, cases.small_objects, 1000)
        for ours, theirs in (("distcomm all_gather_object", "torch all_gather_object"), ("distcomm broadcast_object", "torch broadcast_object_list")):
            r = ratio(runs, theirs, ours)
            detail = f"{cases.median_of(runs, ours) * 1e6:.0f} us vs {cases.median_of(runs, theirs) * 1e6:.0f} us"
            report(line(f"{ours.split()[1]} of a small object, speed-up over torch {theirs.split()[1]}", r, ">= 1.5", r >= 1.5, detail))

    for ranks in (1, 2):
        with World(ranks, timeout=120, call_timeout=900) as world:
            hot_path_goals(world, report)
            if ranks == 2:
                exchange_goals(world, report)
    single_tensor_overhead(report)
    shrink_goal(report)
    rejoin_goals(report)
    single_process_goals(report)

    if args.suite:
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "pytest", "-n", "auto", "-q", "-p", "no:cacheprovider"], cwd=ROOT, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        last = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else "no output"
        report(f"| whole test suite, wall time | {seconds:.0f} s | <= 90 s | {'met' if seconds <= 90 and done.returncode == 0 else 'NOT met'} | {last} |")
    print(f"\n# {os.cpu_count()} cores; torch {__import__('torch').__version__}", flush=True)


if __name__ == "__main__":
    main()
