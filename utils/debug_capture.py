import torch
from torch.utils.data import DataLoader, TensorDataset
from model import mrkd_objective
from model.engine import CapturedStep, execution_for, train_epoch
from model.generator import MaskDraws
from tests.helpers import model_for
device = torch.device("cuda")
images = torch.randn(8, 3, 64, 64, generator=torch.Generator().manual_seed(0)).to(device)
aug = images.flip(-1)
for capture in (False, True):
    torch.manual_seed(0)
    execution = execution_for(device, fast=True)
    model = model_for("resnet18").to(device).to(memory_format=torch.channels_last)
    model.train()
    optimizer = execution.optimizer(model.trainable_parameters(), 0.005, (0.5, 0.999), 0.0)
    step = CapturedStep(model, optimizer, mrkd_objective, execution)
    draws = MaskDraws(torch.Generator().manual_seed(1))
    w0 = model.student.stages[0][0].conv1.weight.detach().clone()
    losses = []
    for i in range(4):
        c = images[:4].contiguous(memory_format=torch.channels_last); a = aug[:4].contiguous(memory_format=torch.channels_last)
        if capture:
            if i == 0:
                step.capture(c, a)
                print("weights restored:", torch.equal(w0, model.student.stages[0][0].conv1.weight), "steps", [s["step"].item() for s in list(optimizer.state.values())[:2]])
            loss = step(c, a, draws).item()
        else:
            loss = step.eager(c, a, draws).item()
        losses.append(loss)
    print("capture" if capture else "eager", losses)
