"""Writes bn_dropout.pt: a TorchScript convolutional net with batch norm and dropout for 8x8
images (64 features, 10 classes), exported by ordinary PyTorch code, that the tests train as a
user-supplied model. Run with the venv `make bench` creates:

    ~/.cache/pot-k8s/bench-venv/bin/python node-image/node/models/make_bn_dropout.py

The weights it holds do not matter: pot-node re-initialises every parameter from the miner's
run seed. Its batch-norm running statistics are buffers, which pot-node checkpoints too.
"""

import pathlib
import sys

import torch


class BnDropout(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 8, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(8)
        self.fc1 = torch.nn.Linear(8 * 4 * 4, 32)
        self.drop = torch.nn.Dropout(0.3)
        self.fc2 = torch.nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.view(-1, 1, 8, 8)
        x = torch.max_pool2d(torch.relu(self.bn(self.conv(x))), 2)
        x = self.drop(torch.relu(self.fc1(x.flatten(1))))
        return self.fc2(x)


def main() -> None:
    out = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else pathlib.Path(__file__).with_name("bn_dropout.pt")
    torch.manual_seed(0)
    torch.jit.script(BnDropout()).save(str(out))
    print(out)


if __name__ == "__main__":
    main()
