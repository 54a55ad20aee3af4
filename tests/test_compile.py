"""COMPILE=True on the CPU: compiled once per process, the eager path's numbers, never a silent fallback.

Inductor generates and builds C++ kernels for each graph: for the whole model (resnet18 at 32 px,
training and evaluation) that took 133 s on the 2-core CPU with an empty cache. So the run-level
tests compile with the "aot_eager" backend (model/engine.py: Compilation.backend): Dynamo's
tracing, guards and caches and AOTAutograd's forward and backward graphs, which decide what is
compiled when, are the real ones; only the kernels are not generated. Inductor itself compiles one
part here (G, about 20 s), and the whole model on a GPU in tests/test_cuda.py.
"""
import re

import pytest
import torch
import torch._dynamo
from torch._dynamo.exc import FailOnRecompileLimitHit
from torch.utils.data import DataLoader, TensorDataset

import main
from model.benchmark import COMPILE_LINE
from model.engine import COMPILATION, Trainer, build, train_epoch
from model.generator import Generator, Generators, MaskDraws
from model.methods import mrkd_objective
from tests.helpers import read_rows, settings_of


@pytest.fixture
def aot_eager(monkeypatch):
    """Compile with aot_eager, from empty in-memory caches, and leave none of its graphs to later tests."""
    monkeypatch.setattr(COMPILATION, "backend", "aot_eager")
    COMPILATION.architecture = None  # the next build starts from torch.compiler.reset()
    yield
    torch.compiler.reset()
    COMPILATION.architecture = None


def test_two_categories_compile_once_and_train_as_the_eager_path(tmp_path, demo_args, capsys, aot_eager):
    """The second category's model, of the same shapes, runs the graphs the first compiled; the fast
    path compiled gives the fast path's losses and metrics (the same operations, traced: they were
    equal on the 2-core CPU; the bounds are the fast path's against fp32, tests/test_engine.py, and
    one swapped pair of the 26 test images, 0.6 points of image AU-ROC)."""
    both = ("--categories=demo_texture,demo_object", "--fast=True", "--device=cpu")  # the GPU's: test_cuda.py
    assert main.main(demo_args(*both, "--run_name=eager")) == 0
    eager = capsys.readouterr().out
    assert main.main(demo_args(*both, "--compile=True", "--run_name=compiled")) == 0
    compiled = capsys.readouterr().out
    lines = COMPILE_LINE.findall(compiled)
    assert [category for category, _, _ in lines] == ["demo_texture", "demo_object"]
    assert int(lines[0][1]) > 0 and float(lines[0][2]) > 0
    assert lines[1][1:] == ("0", "0.0")  # compiled once per process, not once per category
    assert "torch.compile" not in eager
    losses = [[float(value) for value in re.findall(r"epoch 1/1 loss (\S+)", out)] for out in (eager, compiled)]
    assert len(losses[0]) == len(losses[1]) == 2
    assert losses[1] == pytest.approx(losses[0], rel=4e-3)
    rows = [read_rows(tmp_path / "results" / name / "metrics.csv") for name in ("eager", "compiled")]
    for row, other in zip(*rows):
        for name in ("image_auroc", "pixel_auroc", "aupro", "aupro_per_image"):
            assert float(other[name]) == pytest.approx(float(row[name]), abs=0.01), (row["category"], name)


def train(size: int, count: int) -> None:
    """One epoch of resnet18 at size x size on `count` images in batches of 4: the training graphs a category compiles."""
    settings = settings_of({"DEMO": True, "IMAGE_SIZE": size, "COMPILE": True})
    images = torch.randn(count, 3, size, size, generator=torch.Generator().manual_seed(0))
    device = torch.device("cpu")
    model, execution = build(settings.training, settings.machine, device)
    trainer = Trainer.of(model, mrkd_objective, execution, device, settings.training)
    train_epoch(trainer, DataLoader(TensorDataset(images, images.flip(-1)), batch_size=4),
                MaskDraws(torch.Generator().manual_seed(0)))


def test_other_shapes_start_from_a_reset_and_no_limit_is_reached(monkeypatch, aot_eager):
    """Training compiles two graphs of each part (at the batch size, and a short last batch as one
    graph of dynamic batch; evaluation adds a third): with Dynamo's limit at 2, an experiment of two
    image sizes in one process runs, since each size starts from torch.compiler.reset(). Without the
    reset the next size would need another graph, and with fullgraph=True the limit is an error,
    not a fallback to eager code."""
    with torch._dynamo.config.patch(recompile_limit=2):
        train(32, 6)  # batches of 4 and 2: two graphs of each part
        train(64, 4)  # a third without the reset
    monkeypatch.setattr(torch.compiler, "reset", lambda: None)
    with torch._dynamo.config.patch(recompile_limit=1), pytest.raises(FailOnRecompileLimitHit):
        train(32, 4)  # a second graph beside 64's


def test_inductor_compiles_g_to_the_eager_numbers():
    """Inductor's kernels for G^1-G^3 in one graph (fullgraph), forward and backward, equal the eager ones in fp32."""
    torch.manual_seed(0)
    generators = Generators([Generator(c) for c in (8, 16, 32)])
    features = [torch.randn(2, c, s, s) for c, s in ((8, 8), (16, 4), (32, 2))]  # (B, C_l, H_l, W_l)
    masks = [(torch.rand(2, 1, s, s) >= 0.2).float() for s in (8, 4, 2)]        # (B, 1, H_l, W_l)
    results = []
    for compiled in (False, True):
        generators.zero_grad()
        if compiled:
            generators.compile(fullgraph=True)
        restored = generators(features, masks)
        sum(f.square().sum() for f in restored).backward()
        results.append([*restored, *(p.grad for p in generators.parameters())])
    for eager, compiled in zip(*results):
        assert torch.linalg.norm(compiled - eager) <= 1e-5 * torch.linalg.norm(eager)
