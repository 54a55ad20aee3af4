"""The GPU path: deterministic faithful runs, the captured fast step, torch.compile. CUDA only."""
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import main
from model.engine import CapturedStep, Execution, Step, Trainer, execution_for, train_epoch
from model.generator import MaskDraws
from model.methods import mrkd_objective
from model.benchmark import COMPILE_LINE
from tests.helpers import model_for, read_rows, settings_of

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_faithful_runs_repeat_exactly_on_cuda(tmp_path, demo_args):
    for name in ("first", "second"):
        assert main.main(demo_args("--device=cuda", f"--run_name={name}", "--epochs=2")) == 0
    first, second = (torch.load(tmp_path / "checkpoints" / name / "demo_texture.pt", weights_only=True)
                     for name in ("first", "second"))
    for key, tensor in first["student"].items():
        assert torch.equal(second["student"][key], tensor), key
    assert read_rows(tmp_path / "results" / "first" / "metrics.csv") == \
        read_rows(tmp_path / "results" / "second" / "metrics.csv")


def test_captured_step_replays_the_eager_step():
    """In fp32 with cuDNN's deterministic algorithms, the graph gives the eager step's losses:
    the same weights, masks, gradients and Adam updates; the epoch's short last batch runs eagerly.
    (In bf16 two executions differ by rounding that training amplifies, so bf16 cannot show it.)"""
    device = torch.device("cuda")
    execution_for(device, fast=False)  # deterministic cuDNN
    images = torch.randn(10, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    batches = DataLoader(TensorDataset(images, images.flip(-1)), batch_size=4)  # 4, 4 and a short 2
    losses = []
    for capture in (False, True):
        torch.manual_seed(0)
        execution = Execution(capture=True)
        model = model_for("resnet18").to(device)
        optimizer = execution.optimizer(model, settings_of({"DEMO": True}).training)
        step = Step(model, optimizer, mrkd_objective, execution)
        trainer = Trainer(model, CapturedStep(step) if capture else step, execution, device)
        losses.append([train_epoch(trainer, batches, MaskDraws(torch.Generator().manual_seed(1))) for _ in range(3)])
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-4)


def test_compile_runs_on_cuda_once_per_process(tmp_path, demo_args, capsys):
    """Inductor with the captured step: the second category compiles nothing; metrics as the eager fast path's."""
    both = ("--device=cuda", "--fast=True", "--epochs=2", "--categories=demo_texture,demo_object")
    assert main.main(demo_args(*both, "--run_name=eager")) == 0
    assert main.main(demo_args(*both, "--compile=True", "--run_name=compiled")) == 0
    assert COMPILE_LINE.findall(capsys.readouterr().out)[1][:2] == ("demo_object", "0")
    rows = [read_rows(tmp_path / "results" / name / "metrics.csv") for name in ("eager", "compiled")]
    for eager, compiled in zip(*rows):
        for name in ("image_auroc", "pixel_auroc", "aupro"):
            assert abs(float(eager[name]) - float(compiled[name])) <= 0.05, name
