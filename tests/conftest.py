"""Shared fixtures: the demo data, generated once per session, a finished tiny run, main.py arguments
for tiny runs; torch's global flags restored after each test, atomic_write's fsync skipped. Under
pytest-xdist: the slowest files first, and each worker's share of the cores' threads.

torch, main.py and the demo data are imported where they are used: pytest-xdist's controller loads
this file too but runs no test, and importing them would hold up the workers' start by seconds."""
import os
import shutil

import pytest


def pytest_configure(config):
    """Under pytest-xdist, each worker's share of the cores as the thread count of torch, of
    NumPy's and SciPy's OpenBLAS and of OpenMP: a worker per core each running as many threads
    as there are cores would oversubscribe them. The libraries read the variables when they load
    (here, before anything has imported them); OpenBLAS's idle threads spin, which cost the suite
    about 7 s of CPU."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        share = max(1, (os.cpu_count() or 1) // workers)
        os.environ.update(OPENBLAS_NUM_THREADS=str(share), OMP_NUM_THREADS=str(share))
        import torch
        torch.set_num_threads(share)


# The files whose tests take longest, in that order: started first, so that the workers finish
# together (pytest-xdist hands out files in collection order: pyproject.toml's --no-loadscope-reorder).
SLOWEST_FIRST = ("test_compile.py", "test_export.py", "test_ranks.py", "test_main.py", "test_family.py",
                 "test_presets.py", "test_runs.py")


def pytest_collection_modifyitems(items):
    def rank(item):
        name = item.path.name
        return SLOWEST_FIRST.index(name) if name in SLOWEST_FIRST else len(SLOWEST_FIRST)
    items.sort(key=rank)  # stable: each file's tests keep their order


TRAIN_IMAGES = 16  # of the demo's 40 a category: a tiny run trains one step an epoch (tiny_run's batch of 20)


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory):
    """The demo data with every test image and the first TRAIN_IMAGES training images of each
    category; its marker unchanged, so that --demo uses the folder as it is."""
    from dataset.demo import DEMO_CATEGORIES, make_demo_dataset
    folder = tmp_path_factory.mktemp("demo_data")
    make_demo_dataset(folder)
    for category in DEMO_CATEGORIES:
        for image in sorted((folder / category / "train" / "good").iterdir())[TRAIN_IMAGES:]:
            image.unlink()
    return folder


@pytest.fixture(scope="session")
def visa_dir(tmp_path_factory):
    """The demo data in VisA's released layout (split_csv/1cls.csv, JPG images, numbered PNG masks)."""
    from dataset.demo import make_demo_visa
    folder = tmp_path_factory.mktemp("demo_visa")
    make_demo_visa(folder)
    return folder


@pytest.fixture(scope="session")
def mvtec_ad_2_dir(tmp_path_factory):
    """The demo data in MVTec AD 2's released layout: train, validation, test_public with masks,
    test_private and test_private_mixed; 128x96 images."""
    from dataset.demo import make_demo_mvtec_ad_2
    folder = tmp_path_factory.mktemp("demo_mvtec_ad_2")
    make_demo_mvtec_ad_2(folder)
    return folder


def tiny_run(demo_dir, folder, *extra):
    """Arguments of a tiny demo run writing into folder: resnet18, 32 px, one epoch, one category.

    Later arguments replace earlier ones of the same name (main.py refuses a name given
    twice), so tests pass what they change.
    """
    arguments = ["--demo", f"--data_dir={demo_dir}", f"--results_dir={folder}/results",
                 f"--checkpoint_dir={folder}/checkpoints", "--image_size=32", "--epochs=1",
                 "--categories=demo_texture", "--figures=False", "--batch_size=20", *extra]
    return list({argument.partition("=")[0]: argument for argument in arguments}.values())


@pytest.fixture(scope="session")
def finished(tmp_path_factory, demo_dir):
    """A folder holding one finished tiny demo run (results/demo, checkpoints/demo), trained once
    for the session; tests read it, or copy it to change it."""
    import main
    folder = tmp_path_factory.mktemp("finished")
    assert main.main(tiny_run(demo_dir, folder)) == 0
    return folder


@pytest.fixture
def trained(tmp_path, finished):
    """A copy of the finished run in tmp_path, for a test that changes it."""
    shutil.copytree(finished, tmp_path, dirs_exist_ok=True)
    return tmp_path


@pytest.fixture
def demo_args(tmp_path, demo_dir):
    """tiny_run's arguments, writing into the test's tmp_path."""
    return lambda *extra: tiny_run(demo_dir, tmp_path, *extra)


@pytest.fixture
def plain_args(demo_args):
    """The tiny demo run's settings spelled out, without --demo (a run of the user's own)."""
    def build(*extra):
        return demo_args("--demo=False", "--backbone=resnet18", "--weights=none", "--workers=0",
                         "--run_name=plain", *extra)
    return build


@pytest.fixture(autouse=True)
def no_fsync(monkeypatch):
    """utils/files.py: atomic_write's fsync, which makes a result durable against a power cut, waits
    for the disk (about 12 ms a file here); the tests check what is written, not its durability (a
    failing fsync: tests/test_files.py)."""
    monkeypatch.setattr(os, "fsync", lambda descriptor: None)


@pytest.fixture(autouse=True)
def torch_flags():
    """Every test leaves torch's global flags as it found them: model.engine.execution_for sets
    the deterministic algorithms and cuDNN's flags, a test may set the thread count."""
    import torch
    saved = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark, torch.get_num_threads())
    yield
    torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved[2:4]
    torch.set_num_threads(saved[4])
