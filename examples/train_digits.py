"""Train the digits CNN on scikit-learn's bundled digits (no download) in a few seconds.

Writes `digits_cnn.pt` (a state dict), `digits_test.npz` (held-out images as
`input`, float32 1x8x8 each, with `labels`) and `digits_train.npz` (the training split,
for the prune stage's `--train`) into --out.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent / "models"))
from digits_cnn import DigitsCNN


def load_digits_split(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[:, None]
    labels = digits.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(images))
    cut = int(0.8 * len(images))
    train, test = order[:cut], order[cut:]
    return images[train], labels[train], images[test], labels[test]


def train(epochs: int = 15, seed: int = 0) -> tuple[DigitsCNN, np.ndarray, np.ndarray, float]:
    torch.manual_seed(seed)
    x_train, y_train, x_test, y_test = load_digits_split(seed)
    model = DigitsCNN()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    data = torch.from_numpy(x_train)
    target = torch.from_numpy(y_train)
    for _ in range(epochs):
        model.train()
        for index in torch.randperm(len(data)).split(64):
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(data[index]), target[index])
            loss.backward()
            optimizer.step()
    model.eval()
    with torch.inference_mode():
        accuracy = (model(torch.from_numpy(x_test)).argmax(1).numpy() == y_test).mean()
    return model, x_test, y_test, float(accuracy)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("artifacts/digits"))
    parser.add_argument("--epochs", type=int, default=15)
    args = parser.parse_args()
    model, x_test, y_test, accuracy = train(args.epochs)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), args.out / "digits_cnn.pt")
    np.savez(args.out / "digits_test.npz", input=x_test, labels=y_test)
    x_train, y_train, _, _ = load_digits_split()
    np.savez(args.out / "digits_train.npz", input=x_train, labels=y_train)
    print(f"test accuracy {accuracy:.4f} on {len(y_test)} held-out digits; wrote {args.out}")


if __name__ == "__main__":
    main()
