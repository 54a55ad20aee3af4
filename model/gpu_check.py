"""The GPU check of the code as it stands, in one call: python -m model.gpu_check [--budget=S] [--out=DIR].

For a session lent a GPU (issue 21): the whole test suite, the benchmark's four variants and
its compiled fast path, the rehearsal of the full reproduction (faithful on one rank, the fast
path on ranks sharing the GPU), the demo faithful and fast, the demo over two seeds, the
export's onnxruntime figure and, last, the rehearsal of the compiled fast path on ranks. Each
step is a subprocess with its own timeout, cut to what is left of --budget, and is stopped at
it with every process it started; a step the budget no longer allows is recorded as not run.
After every step OUT/summary.md (the device, and for each step its command, wall time, exit
status and key lines) and OUT/logs.txt (each step's output, and the end of the logs it names)
are rewritten, so a run stopped from outside still leaves what it measured. OUT is $OUT where
it is set (the device machine), else results/gpu_check.

--smoke runs every step with tiny settings on the CPU (13 minutes on two busy cores): a check of
this script, not of the code's speed. --only=name,... reruns some steps.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import importlib.util
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent  # the repository: the steps run there
WORK = "results/gpu_check"  # runs, checkpoints and rehearsal data of the steps, under ROOT
LOG_TAIL = 200_000          # characters of each step's output kept in logs.txt
TOO_LITTLE = 10             # seconds: a step is not started with less budget left

# What the device step prints (its own subprocess, so that this process holds no GPU memory).
DEVICE_SNIPPET = """
import os, platform, torch
print(f"torch {torch.__version__}, Python {platform.python_version()}, {os.cpu_count()} CPU cores")
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"GPU {p.name}, {p.total_memory / 2**30:.1f} GiB, {p.multi_processor_count} SMs, "
          f"capability {p.major}.{p.minor}, CUDA {torch.version.cuda}, bf16 {torch.cuda.is_bf16_supported()}")
else:
    print("GPU none: PyTorch sees no CUDA device")
"""


@dataclass(frozen=True)
class Step:
    """One command of the check, its timeout in seconds, and what to read out of its output."""

    name: str
    command: tuple[str, ...]
    timeout: float
    read: Callable[[str], list[str]]


@dataclass(frozen=True)
class Outcome:
    """How a step went: status is 'exit N', 'timed out after N s' or 'not run: ...'."""

    step: Step
    seconds: float
    status: str
    output: str

    @functools.cached_property
    def lines(self) -> list[str]:
        """The step's key lines, read from its output once (summary.md is rewritten after every step)."""
        return self.step.read(self.output)


# ---- reading the steps' output (pure functions) -----------------------------------------------

def device_lines(output: str) -> list[str]:
    """The device snippet's lines: torch, Python and the CPU cores; the GPU as PyTorch sees it."""
    return [line for line in output.splitlines() if line.startswith(("torch ", "GPU "))]


def nvidia_lines(output: str) -> list[str]:
    """nvidia-smi's CSV line: name, driver, memory, clocks now and at most, temperature, power, load."""
    return [f"nvidia-smi: {line}" for line in output.splitlines() if line.count(",") >= 5]


PYTEST_FINAL = re.compile(r"^=*\s*((?:\d+ (?:passed|failed|skipped|errors?|xfailed|xpassed|deselected|warnings?)"
                          r"(?:, )?)+) in ([\d.]+)s", re.MULTILINE)
PYTEST_PROGRESS = re.compile(r"^([.FEsxX]+)\s*(?:\[\s*\d+%\])?$", re.MULTILINE)


def pytest_lines(output: str) -> list[str]:
    """'N passed, M failed, K skipped in T s' (from the progress dots when pytest did not finish),
    then the FAILED, ERROR and SKIPPED lines of its short summary."""
    final = PYTEST_FINAL.findall(output)
    if final:
        counts, seconds = final[-1]
        headline = f"{counts} in {float(seconds):.0f} s"
    else:
        marks = "".join(PYTEST_PROGRESS.findall(output))
        headline = (f"unfinished: {marks.count('.')} passed, {marks.count('F')} failed, {marks.count('s')} skipped, "
                    f"{marks.count('E')} errors so far")
    details = [line for line in output.splitlines() if line.startswith(("FAILED ", "ERROR ", "SKIPPED "))]
    return [headline, *details]


BENCHMARK_ROW = re.compile(r"^(\([abcd]\) .*?)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)$", re.MULTILINE)


def benchmark_lines(output: str) -> list[str]:
    """model.benchmark's speedup line first (when it ran (a) and (c)), then each variant's images/s,
    peak memory and evaluation time, the compile line of a compiled variant, and its header."""
    lines = output.splitlines()
    speedup = [line for line in lines if line.startswith("speedup train ")]
    header = [line for line in lines if ", torch " in line and " test images" in line]
    rows = [f"{name.strip()}: {float(images):.1f} images/s, {float(steps):.2f} steps/s, peak {float(peak):.2f} GiB, "
            f"eval {float(evaluation):.2f} s"
            for name, steps, images, peak, evaluation in BENCHMARK_ROW.findall(output)]
    compiled = [line for line in lines if " compiled: " in line]
    return [*speedup, *rows, *compiled, *header]


def rehearsal_lines(output: str) -> list[str]:
    """The rehearsal's projection, then its line of epoch times, throughput and evaluation."""
    lines = output.splitlines()
    return ([line for line in lines if line.startswith("projected full reproduction:")]
            + [line for line in lines if " categories, " in line and " epochs, " in line])


def mean_row(output: str) -> list[str]:
    """The mean row of main.py's last printed metrics table, as 'mean: column value, ...', and its
    lines of compile time (COMPILE=True) and of evaluation time."""
    lines = output.splitlines()
    headers = [i for i, line in enumerate(lines) if line.startswith("| category |")]
    found = []
    if headers:
        columns = [cell.strip() for cell in lines[headers[-1]].strip("|").split("|")]
        for line in lines[headers[-1]:]:
            if line.startswith("| mean |"):
                cells = [cell.strip() for cell in line.strip("|").split("|")]
                found.append("mean: " + ", ".join(f"{column} {cell}" for column, cell in zip(columns[1:], cells[1:])
                                                  if cell not in ("", "-")))
                break
    return found + [line for line in lines if " torch.compile: " in line or " evaluated in " in line]


def export_lines(output: str) -> list[str]:
    """model.benchmark_export's lines: the export's time and size, each measurement's ms per image."""
    return [line.strip() for line in output.splitlines() if " export " in line or "ms/image" in line]


# ---- the plan ---------------------------------------------------------------------------------

def plan(smoke: bool, python: str = sys.executable) -> list[Step]:
    """The steps in order of importance (the budget may stop the last ones); tiny ones with smoke."""
    out = f"--results_dir={WORK}/results", f"--checkpoint_dir={WORK}/checkpoints", "--overwrite=True"
    main, benchmark = (python, "main.py"), (python, "-m", "model.benchmark")
    tiny = ("--backbone=resnet18", "--size=32", "--batch=4", "--steps=2", "--warmup=1", "--eval_images=10") \
        if smoke else ()
    demo = (*main, "--demo", *out, *(("--image_size=32", "--device=cpu") if smoke else ()))
    demo_epochs = ("--epochs=1",) if smoke else ()  # --demo's 20
    rehearsal = (*benchmark, "--rehearsal", f"--data={WORK}/rehearsal", "--epochs=2",
                 *(("--size=32", "--backbone=resnet18", "--device=cpu") if smoke else ()))
    suite = (python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfEs",
             *(("tests/test_metrics.py",) if smoke else parallel_tests()))
    nvidia = ("nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,temperature.gpu,"
              "power.draw,utilization.gpu", "--format=csv,noheader")
    return [
        Step("device", (python, "-c", DEVICE_SNIPPET), 60, device_lines),
        Step("nvidia-smi", nvidia, 20, nvidia_lines),
        Step("benchmark", (*benchmark, "--variants=abcd", *tiny), 150, benchmark_lines),
        # On the CPU Inductor compiles for minutes: the smoke run's timeout checks the timeout.
        Step("benchmark_compile", (*benchmark, "--variants=c", "--compile", *tiny), 20 if smoke else 180,
             benchmark_lines),
        Step("suite", suite, 60 if smoke else 150, pytest_lines),
        Step("demo", (*demo, *demo_epochs, "--run_name=gpu_check_demo"), 180 if smoke else 60, mean_row),
        Step("demo_fast", (*demo, *demo_epochs, "--run_name=gpu_check_demo_fast", "--fast=True"), 180 if smoke else 60,
             mean_row),
        Step("rehearsal_faithful", (*rehearsal, "--ranks=1", "--categories=2" if smoke else "--categories=3"),
             300 if smoke else 90, rehearsal_lines),
        Step("rehearsal_fast", (*rehearsal, "--ranks=2" if smoke else "--ranks=4", "--fast",
                                "--categories=2" if smoke else "--categories=4"), 300 if smoke else 90,
             rehearsal_lines),
        Step("seeds", (*demo, "--run_name=gpu_check_seeds", "--seeds=111,1", "--epochs=1" if smoke else "--epochs=4"),
             180 if smoke else 60, mean_row),
        Step("export", (python, "-m", "model.benchmark_export", "--repeats=1" if smoke else "--repeats=3",
                        "--cases=resnet18:64" if smoke else "--cases=wide_resnet50_2:256",
                        f"--threads={1 if smoke else os.cpu_count()}"), 300 if smoke else 90, export_lines),
        # Last, where the budget allows: the ranks compile at once, from the caches benchmark_compile filled.
        Step("rehearsal_fast_compile", (*rehearsal, "--ranks=2" if smoke else "--ranks=4", "--fast", "--compile",
                                        "--categories=2" if smoke else "--categories=4"), 30 if smoke else 150,
             rehearsal_lines),
    ]


def parallel_tests() -> tuple[str, ...]:
    """pytest-xdist's options where it is installed (the device image has it): 4 workers, each test
    file on one worker, since the tests of a file may share its fixtures and data; without it, one
    process (pyproject.toml's -n dropped)."""
    if importlib.util.find_spec("xdist") is None:
        return ("-o", "addopts=")
    return ("-n", "4", "--dist=loadfile")


# ---- running ----------------------------------------------------------------------------------

def run_step(step: Step, timeout: float) -> Outcome:
    """Run a step in its own process group, killed whole (torchrun's ranks, the benchmark's pool) at
    its timeout; its stdout and stderr together."""
    started = time.perf_counter()
    environment = {**os.environ, "PYTHONUNBUFFERED": "1"}
    try:
        process = subprocess.Popen(step.command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                   cwd=ROOT, env=environment, start_new_session=True)
    except FileNotFoundError as error:
        return Outcome(step, 0.0, f"not run: {error.strerror}: {step.command[0]}", "")
    try:
        output, _ = process.communicate(timeout=timeout)
        status = f"exit {process.returncode}"
    except subprocess.TimeoutExpired:
        stop(process)
        output, _ = process.communicate()
        status = f"timed out after {timeout:.0f} s"
    return Outcome(step, time.perf_counter() - started, status, output + named_logs(output))


NAMED_LOG = re.compile(r"(?:log in|output is in) (\S+\.log)")


def named_logs(output: str) -> str:
    """The end of each log file the output names (the rehearsal's main.py run, all ranks), so that
    logs.txt holds it: the device machine keeps nothing."""
    tails = []
    for name in NAMED_LOG.findall(output):
        path = ROOT / name
        if path.is_file():
            tails.append(f"----- the end of {name}\n{path.read_text(errors='replace')[-LOG_TAIL // 4:]}\n")
    return "".join(tails)


STOP_GRACE = 5.0  # seconds a step has after SIGTERM before SIGKILL


def stop(process: subprocess.Popen) -> None:
    """End a step and every process it started. torchrun starts each rank in a session of its own,
    outside the step's process group: SIGTERM to the group gives torchrun STOP_GRACE seconds to stop
    its ranks, then SIGKILL ends what is left of the processes found under the step before."""
    tree = [process.pid, *descendants(process.pid)]
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=STOP_GRACE)
    for pid in tree:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def descendants(pid: int) -> list[int]:
    """The processes under pid, through the parent links of Linux's /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):  # a process that ended meanwhile
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        below = children.get(todo.pop(), [])
        found += below
        todo += below
    return found


def shell(command: tuple[str, ...]) -> str:
    """The command as one would type it, the device snippet elided."""
    return " ".join("'<device snippet>'" if "\n" in part else part for part in command)


def summary(outcomes: list[Outcome], started: datetime, budget: float, note: str) -> str:
    """summary.md: the device, a table of the steps, then each step's command and key lines."""
    device = [line for outcome in outcomes if outcome.step.name in ("device", "nvidia-smi")
              for line in outcome.lines] or ["device: its step did not run"]
    used = sum(outcome.seconds for outcome in outcomes)
    text = [f"# GPU check, {started:%Y-%m-%d %H:%M} UTC", "",
            *(f"- {line}" for line in device), f"- budget {budget:.0f} s, {used:.0f} s used"]
    text += [f"- note: {note}"] if note else []
    text += ["", "| step | wall s | status | key figures |", "|---|---|---|---|"]
    for outcome in outcomes:
        key = outcome.lines
        text.append(f"| {outcome.step.name} | {outcome.seconds:.1f} | {outcome.status} | "
                    f"{key[0].replace('|', '/') if key else ''} |")
    for outcome in outcomes:
        text += ["", f"## {outcome.step.name}: {outcome.status}, {outcome.seconds:.1f} s", "",
                 f"`{shell(outcome.step.command)}`", ""]
        text += [f"    {line}" for line in outcome.lines]
    return "\n".join(text) + "\n"


def logs(outcomes: list[Outcome]) -> str:
    """logs.txt: each step's output (its last LOG_TAIL characters) under a header line."""
    return "".join(f"===== {o.step.name}: {shell(o.step.command)} ({o.status}, {o.seconds:.1f} s)\n"
                   f"{o.output[-LOG_TAIL:]}\n" for o in outcomes)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", type=float, default=420, help="seconds for all the steps together")
    parser.add_argument("--out", default=os.environ.get("OUT") or ROOT / WORK, help="where summary.md and logs.txt go")
    parser.add_argument("--smoke", action="store_true", help="tiny settings on the CPU: a check of this script")
    parser.add_argument("--only", default="", help="the steps to run, comma-separated (default: all)")
    parser.add_argument("--note", default="", help="a line for the summary (the commit, say)")
    options = parser.parse_args(argv)
    steps = plan(options.smoke)
    names = [step.name for step in steps]
    chosen = options.only.split(",") if options.only else names
    unknown = sorted(set(chosen) - set(names))
    if unknown:
        parser.error(f"unknown step {', '.join(unknown)}; the steps are {', '.join(names)}")
    out = Path(options.out)
    out.mkdir(parents=True, exist_ok=True)
    started, deadline = datetime.now(timezone.utc), time.perf_counter() + options.budget
    outcomes = []
    for step in steps:
        if step.name not in chosen:
            continue
        left = deadline - time.perf_counter()
        outcome = (run_step(step, min(step.timeout, left)) if left >= TOO_LITTLE
                   else Outcome(step, 0.0, f"not run: {max(left, 0):.0f} s of the budget left", ""))
        outcomes.append(outcome)
        print(f"{step.name}: {outcome.status}, {outcome.seconds:.1f} s", flush=True)
        (out / "summary.md").write_text(summary(outcomes, started, options.budget, options.note))
        (out / "logs.txt").write_text(logs(outcomes))
    print((out / "summary.md").read_text())
    return 0 if all(outcome.status == "exit 0" for outcome in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
