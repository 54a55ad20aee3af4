"""A run's folders end to end (issue 17): a run name reaches nothing outside its folders, one
process uses a run at a time, and a refused command leaves every file as it found it."""
import fcntl
import hashlib
import multiprocessing
import os
import re
import runpy
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

import main
from utils.paper import RDPP_EPOCHS
from tests.conftest import tiny_run
from tests.helpers import error_message, read_rows, skip_training
from utils.errors import InputError
from utils.runs import RunLock

ROOT = Path(__file__).resolve().parent.parent
SEED_RANGE = "SEED must be an integer in [0, 2^32)."

# A process holding a run's lock until it is killed.
HOLDER = """
import sys, time
from pathlib import Path
from utils.runs import RunLock
lock = RunLock(Path(sys.argv[1]), "demo").acquire()  # held while the object lives
print("locked", flush=True)
time.sleep(60)
"""


def snapshot(root):
    """Every path under root (links not followed): a file as its sha256, a folder or a link as what it is."""
    state = {}
    for folder, names, files in os.walk(root):
        for name in names + files:
            path = Path(folder) / name
            state[str(path.relative_to(root))] = (f"link to {os.readlink(path)}" if path.is_symlink() else "folder"
                                                  if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest())
    return state


def refused(capsys, arguments, message, root):
    """main.py refuses `arguments`: status 1, one sentence holding `message` on stderr, no
    traceback, and every path under root as it was."""
    before = snapshot(root)
    capsys.readouterr()
    assert main.main(arguments) == 1
    captured = capsys.readouterr().err
    err = error_message(captured)
    assert err.startswith("error: ") and message in err, err
    assert err.count("\n") == 1 and "Traceback" not in captured
    assert snapshot(root) == before
    return err


def predict_args(folder, images, *extra):
    return ["--run_name=demo", f"--results_dir={folder}/results", f"--checkpoint_dir={folder}/checkpoints",
            f"--predict={images}", *extra]


@pytest.fixture(scope="module")
def new_images(tmp_path_factory, demo_dir):
    """Two demo test images to score with --predict."""
    folder = tmp_path_factory.mktemp("new_images")
    for source in ("good/000.png", "scratch/000.png"):
        shutil.copy(demo_dir / "demo_texture" / "test" / source, folder / source.replace("/", "_"))
    return folder


def test_a_run_name_never_reaches_outside_its_folders(tmp_path, demo_dir, capsys):
    tree = tmp_path / "tree"
    for path in ("results/mine/metrics.csv", "checkpoints/mine/demo_texture.pt", "notes.txt"):
        (tree / path).parent.mkdir(parents=True, exist_ok=True)
        (tree / path).write_text(path)
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "predictions").mkdir(parents=True)
    (elsewhere / "predictions" / "demo_texture.npz").write_text("someone else's")
    (tree / "results" / "linked").symlink_to(elsewhere)
    (tree / "checkpoints" / "linked_checkpoints").symlink_to(elsewhere)
    for name, message in [
        ("..", "RUN_NAME '..' is not a plain folder name"),
        (".", "RUN_NAME '.' is not a plain folder name"),
        ("-rf", "RUN_NAME '-rf' is not a plain folder name"),
        ("linked", f"{tree / 'results' / 'linked'} is a link or lies outside {tree / 'results'}"),
        ("linked_checkpoints", f"{tree / 'checkpoints' / 'linked_checkpoints'} is a link"),
    ]:
        refused(capsys, tiny_run(demo_dir, tree, f"--run_name={name}", "--overwrite=True"), message, tmp_path)
    refused(capsys, ["--run_name=linked", f"--results_dir={tree}/results", f"--predict={tree}"],
            "is a link or lies outside", tmp_path)


def race(ready, go, arguments, stderr):
    """One racer, forked with main.py's imports done: once both are ready it runs main.py as a
    script and reports on stderr how long that took."""
    sys.stderr = open(stderr, "w", buffering=1)  # pytest's capture is the parent's
    os.dup2(sys.stderr.fileno(), 2)
    sys.stdout = open(os.devnull, "w")
    torch.set_num_threads(1)  # as a DataLoader's forked worker does
    ready.touch()
    while not go.exists():
        time.sleep(0.005)
    started = time.perf_counter()
    sys.argv = ["main.py", *arguments]
    try:
        runpy.run_path(str(ROOT / "main.py"), run_name="__main__")
    finally:
        print(f"main.py took {time.perf_counter() - started:.3f} s", file=sys.stderr)


def test_two_processes_never_share_a_run(tmp_path, demo_dir):
    """Started together, one trains and the other is refused at once, naming the first."""
    arguments = tiny_run(demo_dir, tmp_path, "--run_name=race")
    go = tmp_path / "go"
    context = multiprocessing.get_context("fork")  # the racers start at once, with main.py's imports done
    racers = [context.Process(target=race, args=(tmp_path / f"ready{k}", go, arguments, tmp_path / f"err{k}"))
              for k in range(2)]
    for racer in racers:
        racer.start()
    try:
        while not all((tmp_path / f"ready{k}").exists() for k in range(2)):
            assert all(racer.is_alive() for racer in racers), [(tmp_path / f"err{k}").read_text() for k in range(2)]
            time.sleep(0.01)
        go.touch()
        for racer in racers:
            racer.join(timeout=300)
    finally:  # a racer that failed to start leaves none waiting
        for racer in racers:
            racer.kill()
            racer.join()
    statuses = [racer.exitcode for racer in racers]
    errs = [(tmp_path / f"err{k}").read_text() for k in range(2)]
    assert sorted(statuses) == [0, 1], errs
    winner, loser = (0, 1) if statuses[0] == 0 else (1, 0)
    lines = errs[loser].strip().split("\n")
    assert error_message(lines[-2]).startswith(f"error: Run 'race' is in use by process {racers[winner].pid} "
                                               f"(lock {tmp_path / 'checkpoints' / '.race.lock'})")
    assert "Traceback" not in errs[loser]
    assert float(re.fullmatch(r"main.py took (\S+) s", lines[-1]).group(1)) < 1, errs[loser]
    assert read_rows(tmp_path / "results" / "race" / "metrics.csv")[0]["status"] == "ok"
    assert not (tmp_path / "checkpoints" / ".race.lock").exists()


def test_a_lock_taken_a_moment_ago_names_its_holder_once_it_has_written_it(tmp_path, monkeypatch):
    """The holder writes its process id just after it takes the lock: a command refused in between
    waits for the id, and says "another process" if it never comes."""
    folder = tmp_path / "checkpoints" / "demo"
    folder.parent.mkdir()
    held = open(tmp_path / "checkpoints" / ".demo.lock", "a+")
    fcntl.flock(held, fcntl.LOCK_EX)  # taken, its id not written yet
    writer = threading.Timer(0.1, lambda: (held.write("4242\n"), held.flush()))
    writer.start()
    with pytest.raises(InputError, match=r"^Run 'demo' is in use by process 4242 \(lock "):
        RunLock(folder, "demo").acquire()
    writer.join()
    held.truncate(0)
    monkeypatch.setattr(time, "sleep", lambda seconds: None)
    with pytest.raises(InputError, match=r"^Run 'demo' is in use by another process \(lock "):
        RunLock(folder, "demo").acquire()
    held.close()


def test_a_lock_left_by_a_killed_process_does_not_block(trained, demo_dir, capsys):
    lock = trained / "checkpoints" / ".demo.lock"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(trained / "checkpoints" / "demo")], cwd=ROOT,
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline() == "locked\n"
    evaluate = tiny_run(demo_dir, trained, "--eval_only=True")
    try:  # while it lives, the run is its own
        refused(capsys, evaluate, f"Run 'demo' is in use by process {holder.pid}", trained)
    finally:
        holder.kill()
        holder.wait()
    assert lock.read_text() == f"{holder.pid}\n"  # the file stays, naming a process that is gone
    assert main.main(evaluate) == 0
    assert not lock.exists()


def test_a_refused_resume_never_rewrites_the_run(trained, demo_dir, new_images, capsys):
    def resume(*extra):
        return tiny_run(demo_dir, trained, "--resume=True", *extra)

    refused(capsys, resume("--learning_rate=0.01"), "LEARNING_RATE 0.005 -> 0.01", trained)
    refused(capsys, resume("--epochs=3"), f"{trained / 'checkpoints' / 'demo' / 'demo_texture.pt'} holds a finished "
                                          f"training (1 epochs) without its optimiser state", trained)
    assert main.main(predict_args(trained, new_images)) == 0  # the run still scores
    assert len(read_rows(trained / "results" / "demo" / "predict" / "demo_texture.csv")) == 2
    checkpoint = trained / "checkpoints" / "demo" / "demo_texture.pt"
    checkpoint.write_bytes(checkpoint.read_bytes()[:1000])
    refused(capsys, resume(), f"The checkpoint {checkpoint} is damaged", trained)


def test_a_resume_checks_each_category_against_its_own_epochs(trained, demo_dir, monkeypatch, capsys):
    """With CATEGORY_EPOCHS=rdpp a category trained for its own epochs is finished, whatever EPOCHS says."""
    monkeypatch.setitem(RDPP_EPOCHS, "demo_texture", 1)
    capsys.readouterr()
    assert main.main(tiny_run(demo_dir, trained, "--resume=True", "--category_epochs=rdpp", "--epochs=3")) == 0
    assert "demo_texture: resuming after epoch 1" in capsys.readouterr().out


def test_an_overwrite_that_cannot_move_the_checkpoints_deletes_nothing(trained, demo_dir, monkeypatch, capsys):
    checkpoints = trained / "checkpoints" / "demo"
    real_rename = os.rename

    def refuse_checkpoints(source, target):
        if Path(source) == checkpoints:
            raise PermissionError(13, "Permission denied", str(source))
        return real_rename(source, target)

    monkeypatch.setattr(os, "rename", refuse_checkpoints)
    refused(capsys, tiny_run(demo_dir, trained, "--overwrite=True"),
            f"Cannot move {checkpoints} aside to overwrite the run (Permission denied); nothing was deleted", trained)


def test_an_unfinished_checkpoint_is_used_only_when_asked(tmp_path, demo_args, new_images, monkeypatch, capsys):
    calls = []

    def interrupted_in_epoch_2(*arguments, **keywords):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return 0.5  # the epochs themselves are stubbed out: this test is of the checkpoint's use

    with monkeypatch.context() as patch:
        patch.setattr(main, "train_epoch", interrupted_in_epoch_2)
        assert main.main(demo_args("--epochs=3", "--checkpoint_every=1")) == 130
    checkpoint = tmp_path / "checkpoints" / "demo" / "demo_texture.pt"
    refused(capsys, demo_args("--eval_only=True"), f"{checkpoint} has trained 1 of 3 epochs; finish it with "
                                                   f"--run_name=demo --resume=True, or evaluate it as it is with "
                                                   f"--partial=True.",
            tmp_path)
    assert main.main(demo_args("--eval_only=True", "--partial=True")) == 0
    assert read_rows(tmp_path / "results" / "demo" / "metrics.csv")[0]["status"] == "partial: epoch 1 of 3"
    refused(capsys, predict_args(tmp_path, new_images), f"{checkpoint} has trained 1 of 3 epochs", tmp_path)
    assert main.main(predict_args(tmp_path, new_images, "--partial=True")) == 0
    assert "demo_texture: 2 images scored (partial: epoch 1 of 3)" in capsys.readouterr().out


@pytest.mark.parametrize("arguments, message", [
    (("--seed=-1",), SEED_RANGE),
    (("--seed=99999999999999999999",), SEED_RANGE),
    (("--batch_size=0",), "BATCH_SIZE must be at least 1."),
    (("--workers=-1",), "WORKERS must be at least 0."),
    (("--eval_only=True", "--overwrite=True"), "--overwrite replaces a run by a new training; it does not go with "
                                               "--eval_only."),
    (("--eval_only=True", "--resume=True"), "--resume and --eval_only exclude each other; give one."),
])
def test_constants_are_checked_before_any_folder_is_made(tmp_path, demo_args, arguments, message, capsys):
    refused(capsys, demo_args(*arguments), message, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_predict_and_twice_given_flags_are_checked_first(tmp_path, finished, new_images, capsys):
    for folder in (finished, tmp_path):  # a trained run, and none at all
        refused(capsys, predict_args(folder, new_images, "--batch_size=0"), "error: BATCH_SIZE must be at least 1.",
                folder)
    refused(capsys, ["--epochs=1", f"--results_dir={tmp_path}", "--epochs=2"], "--epochs is given twice; give it once.",
            tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_resume_needs_a_checkpoint_of_the_run_and_trains_a_category_without_one(trained, demo_dir, monkeypatch,
                                                                                capsys):
    skip_training(monkeypatch)
    fresh = trained / "fresh"
    fresh.mkdir()
    refused(capsys, tiny_run(demo_dir, fresh, "--resume=True"), f"Run 'demo' has no checkpoint to resume in "
                                                                f"{fresh / 'checkpoints' / 'demo'}", trained)
    assert list(fresh.iterdir()) == []  # not even the folder for the lock
    first = (trained / "checkpoints" / "demo" / "demo_texture.pt").read_bytes()
    capsys.readouterr()
    assert main.main(tiny_run(demo_dir, trained, "--resume=True", "--categories=demo_texture,demo_object")) == 0
    out = capsys.readouterr().out
    assert "demo_texture: resuming after epoch 1" in out
    assert "demo_object: no checkpoint to resume from; training from the first epoch" in out
    assert [row["status"] for row in read_rows(trained / "results" / "demo" / "metrics.csv")] == ["ok", "ok", ""]
    assert (trained / "checkpoints" / "demo" / "demo_texture.pt").read_bytes() == first


def test_a_run_that_evaluated_nothing_leaves_its_name_free(tmp_path, plain_args, demo_dir, capsys):
    """A run of the user's own (a demo run would replace an earlier demo anyway): refused after
    skipping its only category, and the same command again is not refused for its name."""
    data = tmp_path / "data"
    shutil.copytree(demo_dir / "demo_texture", data / "demo_texture")
    for defect in (data / "demo_texture" / "test").iterdir():
        if defect.name != "good":
            shutil.rmtree(defect)
    for _ in range(2):
        capsys.readouterr()
        assert main.main(plain_args(f"--data_dir={data}")) == 1
        assert error_message(capsys.readouterr().err) == "error: no category was evaluated (see the lines above).\n"
    assert not (tmp_path / "checkpoints" / ".plain.lock").exists()


def test_a_full_disk_while_saving_a_checkpoint_keeps_the_previous_one(tmp_path, demo_args, monkeypatch, capsys):
    skip_training(monkeypatch)
    checkpoint = tmp_path / "checkpoints" / "demo" / "demo_texture.pt"
    real_save = torch.save
    saved = []

    def disk_fills_on_the_second_save(state, file):
        if saved:
            file.write(b"PK\x03\x04 the first bytes of a checkpoint")
            raise RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 4480 vs 4416: "
                               "No space left on device")
        real_save(state, file)
        saved.append(True)

    monkeypatch.setattr(main.torch, "save", disk_fills_on_the_second_save)
    assert main.main(demo_args("--epochs=2", "--checkpoint_every=1")) == 1
    captured = capsys.readouterr().err
    err = error_message(captured).rpartition("\n")[0].rpartition("\n")[2]  # the line below the closed bar
    assert err.startswith(f"error: Cannot write {checkpoint} (unexpected pos 4480 vs 4416: No space left on device);")
    assert "the previous demo_texture.pt, if any, is unchanged" in err and "Traceback" not in captured
    assert not list(tmp_path.rglob("*.tmp"))
    assert torch.load(checkpoint, weights_only=True)["epoch"] == 1
