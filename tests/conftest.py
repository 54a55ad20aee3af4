"""Shared fixtures: the demo data, generated once per session, and main.py arguments for tiny runs."""
import pytest


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("demo_data")


@pytest.fixture
def demo_args(tmp_path, demo_dir):
    """Arguments of a tiny demo run writing into tmp_path: resnet18, 32 px, one epoch, one category.

    Later arguments override earlier ones, so tests pass what they change.
    """
    def build(*extra):
        return ["--demo", f"--data_dir={demo_dir}", f"--results_dir={tmp_path}/results",
                f"--checkpoint_dir={tmp_path}/checkpoints", "--image_size=32", "--epochs=1",
                "--categories=demo_texture", "--figures=False", *extra]
    return build
