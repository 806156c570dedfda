"""Bit-identity of a refactor: smoke-budget images of dm, dance, idc and dream+ (digits, ipc 2, seed 0).

Run `save DIR` on the commit before a change and `compare DIR` on the commit after it; compare prints the
max abs difference per method (issue 10's check: 0 for all four between 9760bef and e0bd33c).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

import ddnb

METHODS = ("dm", "dance", "idc", "dream+")


def main() -> None:
    """Save or compare the four methods' smoke images."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("mode", choices=("save", "compare"))
    parser.add_argument("folder", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = ddnb.load_dataset("digits")
    args.folder.mkdir(parents=True, exist_ok=True)
    for method in METHODS:
        synset, _ = ddnb.distill(method, data, ipc=2, budget="smoke", seed=0, progress=False)
        path = args.folder / f"{method.replace('+', 'p')}.pt"
        if args.mode == "save":
            torch.save(synset.images, path)
            print(f"{method}: saved {tuple(synset.images.shape)} to {path}")
        else:
            ref = torch.load(path, weights_only=True)
            diff = float((ref - synset.images).abs().max())
            print(f"{method}: max abs difference {diff:.3g} (bit-identical: {torch.equal(ref, synset.images)})")


if __name__ == "__main__":
    main()
