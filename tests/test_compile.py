"""COMPILE=True on the CPU: compiled once per process, the eager path's numbers, never a silent fallback.

Inductor generates and builds C++ kernels for each graph: for the whole model (resnet18 at 32 px,
training and evaluation) that took 133 s on the 2-core CPU with an empty cache. So the run-level
tests compile with the "aot_eager" backend (model/engine.py: Compilation.backend): Dynamo's
tracing, guards and caches and AOTAutograd's forward and backward graphs, which decide what is
compiled when, are the real ones; only the kernels are not generated. Inductor itself compiles one
part here (G, about 20 s with an empty cache), and the whole model on a GPU in tests/test_cuda.py.
"""
import re

import pytest
import torch
import torch._dynamo
from torch._dynamo.exc import FailOnRecompileLimitHit

import main
from model.benchmark import COMPILE_LINE
from model.engine import COMPILATION, Compilation
from model.generator import Generator, Generators
from tests.helpers import read_rows


@pytest.fixture
def aot_eager(monkeypatch):
    """Compile with aot_eager, from empty in-memory caches, and leave none of its graphs to later tests."""
    monkeypatch.setattr(COMPILATION, "backend", "aot_eager")
    COMPILATION.architecture = None  # the next build starts from torch.compiler.reset()
    yield
    torch.compiler.reset()
    COMPILATION.architecture = None


def test_two_categories_compile_once_and_train_as_the_eager_path(tmp_path, demo_args, capsys, aot_eager,
                                                                 monkeypatch):
    """The second category's model, of the same shapes, runs the graphs the first compiled (16 images
    in batches of 6: a short last batch, one graph of dynamic batch); the fast path compiled gives
    the fast path's losses and metrics (the same operations, traced: they were
    equal on the 2-core CPU; the bounds are the fast path's against fp32, tests/test_engine.py, and
    one swapped pair of the 26 test images, 0.6 points of image AU-ROC)."""
    both = ("--categories=demo_texture,demo_object", "--fast=True", "--device=cpu", "--batch_size=6")
    assert main.main(demo_args(*both, "--run_name=eager")) == 0
    eager = capsys.readouterr().out
    # Fig. 9's features run the evaluation's graphs (its autocast and memory format), compiling none of their own.
    compiling, feature_examples = [], main.feature_examples

    def counted(*arguments):
        before = COMPILATION.compilations
        found = feature_examples(*arguments)
        compiling.append(COMPILATION.compilations - before)
        return found

    monkeypatch.setattr(main, "feature_examples", counted)
    assert main.main(demo_args(*both, "--compile=True", "--run_name=compiled")) == 0
    compiled = capsys.readouterr().out
    assert compiling == [0, 0]
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


class Teacher(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)

    def forward(self, images):
        return self.conv(images)


class Student(Teacher):
    def forward(self, features):  # a code of its own: Dynamo keeps the graphs of each code apart
        return self.conv(features[:, :3])


class Parts(torch.nn.Module):
    """What Compilation compiles of a model, small: its teacher and its trained parts."""

    def __init__(self):
        super().__init__()
        self.teacher, self.student = Teacher(), Student()

    def trained_parts(self):
        return {"student": self.student}


def compile_and_run(compilation, size):
    """A new model, compiled for an architecture of this image size, run on one batch."""
    model = Parts()
    compilation(model, ("cpu", size))
    model.student(model.teacher(torch.randn(2, 3, size, size)))


def test_other_shapes_start_from_a_reset_and_no_limit_is_reached(monkeypatch, aot_eager):
    """A part compiles a graph for each shape it sees (training at the batch size, a short last batch
    as one graph of dynamic batch, evaluation: the test above); a model of another architecture or
    image size, an experiment's next row, starts from torch.compiler.reset(), so that no number of
    rows reaches Dynamo's limit of graphs per code, which with fullgraph=True is an error, not a
    fallback to eager code. Here the limit is one graph, and each size needs one."""
    compilation = Compilation("aot_eager")
    with torch._dynamo.config.patch(recompile_limit=1):
        for size in (8, 12, 8):
            compile_and_run(compilation, size)
        monkeypatch.setattr(torch.compiler, "reset", lambda: None)
        with pytest.raises(FailOnRecompileLimitHit):
            compile_and_run(compilation, 12)


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
