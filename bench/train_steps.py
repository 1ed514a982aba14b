"""The reference for pot-node's training throughput: the same model, data, batch size,
optimizer and thread count in PyTorch (Python), eager mode. Prints one JSON line.

    python bench/train_steps.py --model mlp:128,64 --batch 64 --threads 1
"""

import argparse
import gzip
import json
import pathlib
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F

DIGITS = pathlib.Path(__file__).resolve().parent.parent / "node-image/node/data/digits/digits.csv.gz"


def build(model: str) -> torch.nn.Module:
    if model.startswith("mlp:"):
        widths = [64] + [int(w) for w in model[4:].split(",")] + [10]
        layers = []
        for i in range(len(widths) - 1):
            layers.append(torch.nn.Linear(widths[i], widths[i + 1]))
            if i < len(widths) - 2:
                layers.append(torch.nn.ReLU())
        return torch.nn.Sequential(*layers)
    if model == "lenet5":
        return torch.nn.Sequential(
            torch.nn.Unflatten(1, (1, 8, 8)),
            torch.nn.Conv2d(1, 6, 5, padding=2), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
            torch.nn.Conv2d(6, 16, 5, padding=2), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
            torch.nn.Flatten(),
            torch.nn.Linear(64, 120), torch.nn.ReLU(),
            torch.nn.Linear(120, 84), torch.nn.ReLU(),
            torch.nn.Linear(84, 10),
        )
    if model == "resnet-small":
        return ResNetSmall(3, 32, 10)
    raise SystemExit(f"unknown model {model}")


class BasicBlock(torch.nn.Module):
    """pot-node's residual block: two 3x3 convolutions with batch norm, a 1x1 projection on the
    skip path when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(cout)
        self.conv2 = torch.nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = torch.nn.BatchNorm2d(cout)
        self.project = None
        if stride != 1 or cin != cout:
            self.project = torch.nn.Sequential(torch.nn.Conv2d(cin, cout, 1, stride, 0, bias=False),
                                               torch.nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(y + (x if self.project is None else self.project(x)))


class ResNetSmall(torch.nn.Module):
    """pot-node's `resnet-small`: a 3x3 stem, blocks of 16, 32 and 64 channels (strides 1, 2, 2),
    global average pooling and a linear classifier, on flattened images."""

    def __init__(self, channels: int, size: int, classes: int) -> None:
        super().__init__()
        self.shape = (channels, size, size)
        self.stem = torch.nn.Conv2d(channels, 16, 3, 1, 1, bias=False)
        self.stem_bn = torch.nn.BatchNorm2d(16)
        self.blocks = torch.nn.Sequential(BasicBlock(16, 16, 1), BasicBlock(16, 32, 2), BasicBlock(32, 64, 2))
        self.fc = torch.nn.Linear(64, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem_bn(self.stem(x.view(-1, *self.shape))))
        x = F.adaptive_avg_pool2d(self.blocks(x), 1).flatten(1)
        return self.fc(x)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--batch", type=int, required=True)
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--data", default="digits", choices=["digits", "cifar-shaped"])
    a = ap.parse_args()
    device = torch.device(a.device)

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    if a.data == "digits":
        with gzip.open(DIGITS, "rt") as f:
            data = np.loadtxt(f, delimiter=",", dtype=np.float32)
        x = torch.from_numpy(data[:, :-1] / 16.0)
        y = torch.from_numpy(data[:, -1]).long()
    else:
        # As pot-node's `cifar-shaped`: 2,048 random 3x32x32 images in 10 classes.
        x = torch.randn(2048, 3 * 32 * 32)
        y = torch.randint(10, (2048,))
    model = build(a.model).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    n = x.shape[0]
    per_epoch = max(n // a.batch, 1)
    state = {"step": 0, "order": torch.randperm(n)}

    def train(steps: int) -> None:
        for _ in range(steps):
            b = state["step"] % per_epoch
            if b == 0:
                state["order"] = torch.randperm(n)
            idx = state["order"][b * a.batch:(b + 1) * a.batch]
            # Batches are cut on the CPU and moved, as pot-node does.
            xb, yb = x.index_select(0, idx).to(device), y.index_select(0, idx).to(device)
            opt.zero_grad()
            loss = F.cross_entropy(model(xb), yb)
            loss.backward()
            opt.step()
            loss.item()
            state["step"] += 1

    train(20)
    rates = []
    for _ in range(5):
        start = time.perf_counter()
        train(a.steps)
        rates.append(a.steps / (time.perf_counter() - start))
    print(json.dumps({"model": a.model, "data": a.data, "batch": a.batch, "threads": a.threads, "device": a.device,
                      "steps_per_second": statistics.median(rates)}))


if __name__ == "__main__":
    main()
