"""How useful EfficientNet-Lite0's frozen ImageNet features are at small input sizes.

Linear probing (LP) at the stored sizes of ../shared/data (16-32 px) scores near chance in
``reproduce.sh``. This script separates the backbone from our training loop: it extracts the
pooled pre-logit features of the frozen pretrained model (eval mode) for CIFAR-10 images resized
to each size, fits scikit-learn's logistic regression on them and prints test accuracy.

    python benchmarks/frozen_features.py          # about 2 minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

from biotune.data.catalog import load_named
from biotune.data.dataset import preprocess
from biotune.models.build import build_model


def features(model: torch.nn.Module, x: torch.Tensor, batch: int = 100) -> np.ndarray:
    with torch.no_grad():
        parts = [model.forward_head(model.forward_features(x[i : i + batch]), pre_logits=True)
                 for i in range(0, len(x), batch)]
    return torch.cat(parts).float().numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="../shared/data")
    parser.add_argument("--sizes", default="32,64,224")
    parser.add_argument("--train", type=int, default=1000, help="training images (a seeded random subset)")
    parser.add_argument("--test", type=int, default=500, help="test images (a seeded random subset)")
    args = parser.parse_args()

    ds = load_named("cifar10", data_dir=args.data_dir)
    rng = np.random.default_rng(0)
    tr, te = rng.permutation(len(ds.y_train))[: args.train], rng.permutation(len(ds.y_test))[: args.test]
    pm = build_model("efficientnet_lite0", ds.num_classes, weights="auto", seed=0)
    model = pm.model.eval()
    print(f"efficientnet_lite0 ({pm.weights}), CIFAR-10, {args.train} train / {args.test} test images, "
          f"logistic regression on frozen pooled features")
    print(f"{'size':>6} {'feature std':>12} {'test acc.':>10} {'seconds':>8}")
    for size in (int(s) for s in args.sizes.split(",")):
        start = time.perf_counter()
        f_train = features(model, preprocess(ds.x_train[tr], image_size=size, mean=pm.mean, std=pm.std))
        f_test = features(model, preprocess(ds.x_test[te], image_size=size, mean=pm.mean, std=pm.std))
        clf = LogisticRegression(max_iter=2000).fit(f_train, ds.y_train[tr])
        acc = clf.score(f_test, ds.y_test[te])
        print(f"{size:>6} {f_train.std():>12.4f} {100 * acc:>9.1f}% {time.perf_counter() - start:>8.1f}")


if __name__ == "__main__":
    main()
