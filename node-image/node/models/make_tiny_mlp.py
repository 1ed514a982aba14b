"""Writes tiny_mlp.pt: a TorchScript MLP (64 -> 32 -> 10, ReLU) that the tests train as a
user-supplied model. Run with the venv `make bench` creates:

    ~/.cache/pot-k8s/bench-venv/bin/python node-image/node/models/make_tiny_mlp.py

The weights it holds do not matter: pot-node re-initialises every parameter from the miner's
run seed, so that W_0 is bound to the miner and not to the file.
"""

import pathlib
import sys

import torch


class TinyMlp(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = torch.nn.Linear(64, 32)
        self.fc2 = torch.nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


def main() -> None:
    out = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else pathlib.Path(__file__).with_name("tiny_mlp.pt")
    torch.manual_seed(0)
    torch.jit.script(TinyMlp()).save(str(out))
    print(out)


if __name__ == "__main__":
    main()
