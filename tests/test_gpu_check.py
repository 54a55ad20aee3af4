"""model/gpu_check.py: what it reads out of each step's output, its summary, its timeouts."""
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

from model import gpu_check
from model.gpu_check import Outcome, Step

BENCHMARK = """\
NVIDIA H100 80GB HBM3, torch 2.11.0+cu130: wide_resnet50_2, 256x256, batch 16, 20 timed steps, 150 test images
variant         train steps/s  images/s  peak GiB   eval s
(a) authors            20.706     331.3      5.01    11.95
(b) faithful           20.606     329.7      5.01     0.54
(c) fast               46.169     738.7      3.90     0.48
(d) (b) not determ.         22.100     353.6      5.01     0.51
speedup train 2.23x eval 24.95x
"""

COMPILED = """\
CPU (1 threads, AVX512), torch 2.14.1+cu130: resnet18, 32x32, batch 4, 2 timed steps, 10 test images
variant         train steps/s  images/s  peak GiB   eval s
(c) fast                4.218      16.9      1.22     0.07
(c) fast compiled: 12 compilations, 176.7 s
peak memory on the CPU is the process's peak resident set
"""

DEMO = """\
Run 'gpu_check_demo' (mrkd) on cuda:0: 2 of 2 trainings; results and figures in results/gpu_check/results/...
demo_texture epoch 20/20 loss 0.1234 (0.5 s)
demo_texture evaluated in 0.3 s
demo_texture torch.compile: 9 compilations, 41.5 s (this process: 9, 41.5 s)
demo_texture image_auroc 100.0  pixel_auroc 97.4  aupro 90.0  aupro_per_image 93.6  threshold 0.3589

| category | image_auroc | pixel_auroc | aupro | aupro_per_image | f1_f1_test | threshold | status |
|---|---|---|---|---|---|---|---|
| demo_texture | 100.0 | 97.4 | 90.0 | 93.6 | 100.0 | 0.3589 | ok |
| demo_object | 89.4 | 93.8 | 79.2 | 89.2 | 90.2 | 0.2957 | ok |
| mean | 94.7 | 95.6 | 84.6 | 91.4 | - | - |  |
"""


def test_benchmark_lines_lead_with_the_speedup_then_every_variant():
    lines = gpu_check.benchmark_lines(BENCHMARK)
    assert lines[:5] == ["speedup train 2.23x eval 24.95x",
                         "(a) authors: 331.3 images/s, 20.71 steps/s, peak 5.01 GiB, eval 11.95 s",
                         "(b) faithful: 329.7 images/s, 20.61 steps/s, peak 5.01 GiB, eval 0.54 s",
                         "(c) fast: 738.7 images/s, 46.17 steps/s, peak 3.90 GiB, eval 0.48 s",
                         "(d) (b) not determ.: 353.6 images/s, 22.10 steps/s, peak 5.01 GiB, eval 0.51 s"]
    assert len(lines) == 6 and lines[5].startswith("NVIDIA H100 80GB HBM3, torch 2.11.0+cu130: wide_resnet50_2")
    compiled = gpu_check.benchmark_lines(COMPILED)
    assert compiled[:2] == ["(c) fast: 16.9 images/s, 4.22 steps/s, peak 1.22 GiB, eval 0.07 s",
                            "(c) fast compiled: 12 compilations, 176.7 s"]
    assert gpu_check.benchmark_lines("Traceback (most recent call last):\n") == []


def test_pytest_lines_count_a_finished_and_an_unfinished_run():
    finished = ("..F.s [100%]\n=== short test summary info ===\nSKIPPED [3] tests/test_cuda.py:14: needs a CUDA GPU\n"
                "FAILED tests/test_predict.py::test_batches - AssertionError: 1.2e-4\n"
                "1 failed, 270 passed, 3 skipped, 2 warnings in 95.04s (0:01:35)\n")
    assert gpu_check.pytest_lines(finished) == [
        "1 failed, 270 passed, 3 skipped, 2 warnings in 95 s",
        "SKIPPED [3] tests/test_cuda.py:14: needs a CUDA GPU",
        "FAILED tests/test_predict.py::test_batches - AssertionError: 1.2e-4"]
    assert gpu_check.pytest_lines("....s..F [ 10%]\n..E.\n") == [
        "unfinished: 9 passed, 1 failed, 1 skipped, 1 errors so far"]


def test_rehearsal_and_demo_lines():
    rehearsal = ("data: results/gpu_check/rehearsal/256 (4 s)\n"
                 "4 categories, 2 epochs, 4 ranks, fast: 41 s; steady epoch over all categories 3.1 s of rank time "
                 "(1290 images/s together), evaluation 0.6 s per category; log in x.log\n"
                 "projected full reproduction: 9.8 min (4 ranks, fast)\n")
    assert gpu_check.rehearsal_lines(rehearsal) == ["projected full reproduction: 9.8 min (4 ranks, fast)",
                                                    rehearsal.splitlines()[1]]
    assert gpu_check.mean_row(DEMO) == [
        "mean: image_auroc 94.7, pixel_auroc 95.6, aupro 84.6, aupro_per_image 91.4",
        "demo_texture evaluated in 0.3 s",
        "demo_texture torch.compile: 9 compilations, 41.5 s (this process: 9, 41.5 s)"]
    seeds = "| category | image_auroc | status |\n|---|---|---|\n| mean | 94.7 ± 1.2 |  |\n"
    assert gpu_check.mean_row(seeds) == ["mean: image_auroc 94.7 ± 1.2"]
    assert gpu_check.mean_row("Traceback (most recent call last):\n") == []


def step(name, output_reader=gpu_check.benchmark_lines):
    return Step(name, ("python", "-m", "model.benchmark", "--variants=abcd"), 150, output_reader)


def test_the_summary_has_the_device_a_row_per_step_and_each_steps_key_lines():
    device = Step("device", ("python", "-c", "import torch\nprint(torch.__version__)"), 60, gpu_check.device_lines)
    outcomes = [Outcome(device, 3.2, "exit 0", "torch 2.11.0+cu130, Python 3.12.3, 16 CPU cores\n"
                                               "GPU NVIDIA H200, 139.8 GiB, 132 SMs, capability 9.0\n"),
                Outcome(step("benchmark"), 71.04, "exit 0", BENCHMARK),
                Outcome(step("benchmark_compile"), 180.0, "timed out after 180 s", "partial output\n"),
                Outcome(step("export"), 0.0, "not run: 3 s of the budget left", "")]
    text = gpu_check.summary(outcomes, datetime(2026, 12, 1, 14, 5, tzinfo=timezone.utc), 420, "commit abc123")
    assert text.startswith("# GPU check, 2026-12-01 14:05 UTC\n\n- torch 2.11.0+cu130, Python 3.12.3, 16 CPU cores\n"
                           "- GPU NVIDIA H200, 139.8 GiB, 132 SMs, capability 9.0\n- budget 420 s, 254 s used\n"
                           "- note: commit abc123\n")
    assert "| benchmark | 71.0 | exit 0 | speedup train 2.23x eval 24.95x |" in text
    assert "| benchmark_compile | 180.0 | timed out after 180 s |  |" in text
    assert "| export | 0.0 | not run: 3 s of the budget left |  |" in text
    assert "`python -c '<device snippet>'`" in text and "`python -m model.benchmark --variants=abcd`" in text
    assert "    (a) authors: 331.3 images/s, 20.71 steps/s, peak 5.01 GiB, eval 11.95 s\n" in text
    assert gpu_check.logs(outcomes[1:2]).startswith(
        "===== benchmark: python -m model.benchmark --variants=abcd (exit 0, 71.0 s)\nNVIDIA H100")


def running(pid: int) -> bool:
    """Whether the process exists and is not a zombie (Linux's /proc)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_a_step_past_its_timeout_is_killed_with_its_children(monkeypatch):
    """Its children too, one in a session of its own as torchrun starts its ranks, one ignoring SIGTERM."""
    monkeypatch.setattr(gpu_check, "STOP_GRACE", 0.5)  # the sleeper ignores SIGTERM: SIGKILL ends it
    sleeper = ("import signal, subprocess, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
               "sleep = [sys.executable, '-c', 'import time; time.sleep(60)']; "
               "children = [subprocess.Popen(sleep), subprocess.Popen(sleep, start_new_session=True)]; "
               "print(*(child.pid for child in children), flush=True); time.sleep(60)")
    started = time.perf_counter()
    outcome = gpu_check.run_step(Step("sleeper", (sys.executable, "-c", sleeper), 60, gpu_check.device_lines), 2)
    assert time.perf_counter() - started < 10
    assert outcome.status == "timed out after 2 s"
    children = [int(pid) for pid in outcome.output.split()]
    for _ in range(50):
        if not any(running(child) for child in children):
            break
        time.sleep(0.1)
    assert len(children) == 2 and not any(running(child) for child in children)
    missing = gpu_check.run_step(Step("absent", ("no-such-program-here",), 60, gpu_check.nvidia_lines), 5)
    assert missing.status.startswith("not run: No such file or directory")


def test_the_end_of_a_log_the_output_names_is_attached(tmp_path):
    """As the rehearsal names main.py's log; a name of no file attaches nothing."""
    (tmp_path / "run.log").write_text("carpet epoch 1/2 loss 0.3664 (29.8 s)\n")
    printed = f"print('log in {tmp_path / 'run.log'}; log in {tmp_path / 'none.log'}')"
    outcome = gpu_check.run_step(Step("named", (sys.executable, "-c", printed), 60, gpu_check.rehearsal_lines), 30)
    assert outcome.output == (f"log in {tmp_path / 'run.log'}; log in {tmp_path / 'none.log'}\n"
                              f"----- the end of {tmp_path / 'run.log'}\ncarpet epoch 1/2 loss 0.3664 (29.8 s)\n\n")


def test_only_some_steps_with_their_files(tmp_path, capsys):
    assert gpu_check.main(["--only=device", f"--out={tmp_path}", "--smoke"]) == 0
    summary = (tmp_path / "summary.md").read_text()
    assert "| device |" in summary and "| benchmark |" not in summary and "- torch " in summary
    assert (tmp_path / "logs.txt").read_text().startswith("===== device: ")
    with pytest.raises(SystemExit):
        gpu_check.main(["--only=device,bench", f"--out={tmp_path}"])
    assert "unknown step bench" in capsys.readouterr().err
