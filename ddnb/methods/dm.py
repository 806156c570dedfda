"""DM: Dataset Condensation with Distribution Matching (Zhao & Bilen, WACV 2023).

Each iteration draws a fresh randomly initialized ConvNet and, for every class c, pulls the mean
embedding of the synthetic images of c toward the mean embedding of a batch of real images of c
(paper 001 Eq. 2; paper 004 §1.2), both augmented by DSA with the same parameters per class
(siamese). The loss is the sum over classes of ||mean f(real_c) - mean f(syn_c)||^2; the images
take one SGD step (reference: lr 1.0, momentum 0.5, 20,000 iterations, 256 real images per class).

Fast by design, with the same loss as the reference's per-class loop (see tests/test_dm.py):
real features run under inference mode (no autograd graph) in chunks of whole classes; the
synthetic images of all classes go through ONE forward pass (the ConvNet normalizes per sample,
so batching classes changes nothing); inputs are channels_last; the per-iteration network is
copied into one persistent module (`ReinitNet`), so a compiled embed (setting `compile`) is never
recompiled. `dsa_strategy=None` turns augmentation off. Setting `precision` ("auto" by default = bf16 where the
hardware has it natively, else fp32, see ddnb.precision; or "bf16", "fp32") runs the real-image embed under bf16
autocast (results/benchmarks/bf16-fashion_mnist.json: accuracy within the spread over seeds); the synthetic
forward/backward stays fp32. Under bf16 the network and inputs use the contiguous layout whatever
`channels_last` says: oneDNN's bf16 GroupNorm on channels_last made a Fashion-MNIST `cpu`
iteration 1.25x slower than fp32, contiguous 1.35x faster (one thread, AVX512-BF16).

Three settings reproduce the reference's DSA for issue 11's ablation (`benchmarks/ablate_dm.py`); their
defaults are ddnb's behaviour: `dsa_draws` "reference" re-seeds before every draw as `DiffAugment` does
(ddnb.augment), `dsa_align_corners` False is the affine ops' default since torch 1.3 (on square images
equal to True up to float rounding), and `class_seeds` "shared" gives every class of an iteration one DSA
seed (the reference's seed is the time in ms mod 100,000, so classes augmented within one millisecond
share it).
"""
from __future__ import annotations

import logging
from typing import Any, Callable

import torch
from torch import Tensor, nn

from ddnb.augment import DSA_DRAWS, DSA_STRATEGY, dsa
from ddnb.methods import register
from ddnb.methods.base import build_synset, class_images, in_loop_eval, init_synthetic
from ddnb.methods.loop import History, RunOptions, run_loop, seed_iteration
from ddnb.models import get_model
from ddnb.precision import PRECISIONS, autocast, resolve_precision
from ddnb.sampling import SAMPLER_SETTINGS, SAMPLER_SPEC, make_sampler
from ddnb.settings import Bool, Choice, Float, Int, Positive, Strategy, Text
from ddnb.utils import resolve_device

log = logging.getLogger(__name__)

_COMMON = dict(arch="convnet3", lr_img=1.0, momentum=0.5, dsa_strategy=DSA_STRATEGY, init="real",
               factor=1, channels_last=True, compile=False, real_chunk=256, eval_seeds=1, precision="auto",
               dsa_draws="independent", dsa_align_corners=True, class_seeds="per_class", **SAMPLER_SETTINGS)
SPEC = dict(arch=Text(), lr_img=Positive(), momentum=Float(0, 1, high_open=True), dsa_strategy=Strategy(),
            init=Choice("real", "noise"), factor=Int(1), channels_last=Bool(), compile=Bool(), real_chunk=Int(1),
            eval_seeds=Int(1), iterations=Int(0), batch_real=Int(1), precision=Choice(*PRECISIONS),
            dsa_draws=Choice(*DSA_DRAWS), dsa_align_corners=Bool(), class_seeds=Choice("per_class", "shared"),
            **SAMPLER_SPEC)
BUDGETS = {
    "smoke": {**_COMMON, "iterations": 20, "batch_real": 32},  # seconds on digits, for tests
    "cpu": {**_COMMON, "iterations": 500, "batch_real": 128},  # minutes for Fashion-MNIST IPC 10 on 2 cores
    # main_DM.py defaults behind 001 Tab. 1 (DM row): 20k iterations, lr_img 1, momentum 0.5, 256 real/class;
    # torch.compile (about 1.2x per iteration on CPU, about a minute to compile) pays over 20k iterations
    "paper": {**_COMMON, "iterations": 20_000, "batch_real": 256, "compile": True},
}
Embed = Callable[[Tensor], Tensor]


# ---------------------------------------------------------------- the loss, batched

def class_seeds(generator: torch.Generator, num_classes: int, shared: bool = False) -> list[int]:
    """One DSA seed per class for this iteration (shared by the real and synthetic batch: siamese); with
    `shared`, the first of them for every class (the same numbers are drawn either way)."""
    seeds = torch.randint(0, 2**31 - 1, (num_classes,), generator=generator).tolist()
    return [seeds[0]] * num_classes if shared else seeds


def _augment(x: Tensor, seed: int, strategy: str | None, draws: str, align_corners: bool) -> Tensor:
    """DSA with the class's seed, or x itself when augmentation is off."""
    return dsa(x, strategy, seed=seed, draws=draws, align_corners=align_corners) if strategy else x


def _to_format(x: Tensor, channels_last: bool) -> Tensor:
    """The embed input layout: channels_last (faster convolutions on CPU) or contiguous."""
    return x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def run_layout(channels_last: bool, precision: str) -> bool:
    """Whether a run uses channels_last: as set under fp32, never under bf16 (see the module docstring)."""
    return channels_last and precision == "fp32"


def _class_means(feats: Tensor, sizes: list[int]) -> Tensor:
    """(K, D) means of consecutive row blocks of the given sizes (one block per class)."""
    if len(set(sizes)) == 1:
        return feats.reshape(len(sizes), sizes[0], -1).mean(1)
    return torch.stack([f.mean(0) for f in feats.split(sizes)])


def _chunks(sizes: list[int], chunk: int) -> list[range]:
    """Consecutive class ranges holding at most `chunk` images each (at least one class per range)."""
    out, lo, total = [], 0, 0
    for c, n in enumerate(sizes):
        if c > lo and total + n > chunk:
            out.append(range(lo, c))
            lo, total = c, 0
        total += n
    return [*out, range(lo, len(sizes))]


def real_class_means(embed: Embed, real: list[Tensor], seeds: list[int], strategy: str | None,
                     chunk: int, channels_last: bool = True, precision: str = "fp32", *,
                     draws: str = "independent", align_corners: bool = True) -> Tensor:
    """Mean embedding (K, D) of each class's augmented real batch, without autograd, in class chunks;
    the embed under `precision` (ddnb.precision: bf16 autocast or fp32), the means in fp32."""
    sizes = [r.shape[0] for r in real]
    means = []
    with torch.inference_mode():
        for cls in _chunks(sizes, chunk):
            x = _to_format(torch.cat([_augment(real[c], seeds[c], strategy, draws, align_corners) for c in cls]),
                           channels_last)
            with autocast(precision, x.device):
                feats = embed(x)
            means.append(_class_means(feats.float(), sizes[cls.start:cls.stop]))
    return torch.cat(means).clone()  # a normal tensor: usable in the autograd graph of the loss


def syn_class_means(embed: Embed, syn: list[Tensor], seeds: list[int], strategy: str | None,
                    channels_last: bool = True, *, draws: str = "independent", align_corners: bool = True) -> Tensor:
    """Mean embedding (K, D) of each class's augmented synthetic images: all classes in one forward."""
    x = torch.cat([_augment(s, seeds[c], strategy, draws, align_corners) for c, s in enumerate(syn)])
    return _class_means(embed(_to_format(x, channels_last)), [s.shape[0] for s in syn])


def dm_loss(mean_real: Tensor, mean_syn: Tensor) -> Tensor:
    """Sum over classes of the squared distance between real and synthetic mean embeddings."""
    return ((mean_real - mean_syn) ** 2).sum()


def syn_by_class(images: Tensor, ipc: int, num_classes: int, factor: int, image_size: int) -> list[Tensor]:
    """The decoded synthetic images of each class from class-sorted stored images, class 0 first."""
    return [class_images(images, c, ipc, factor, image_size) for c in range(num_classes)]


def sample_real(dataset: Any, n: int, generator: torch.Generator) -> list[Tensor]:
    """n random real images of every class, drawn with `generator` (class-balanced)."""
    return [dataset.sample_class(c, n, generator) for c in range(dataset.num_classes)]


# ---------------------------------------------------------------- the network

class ReinitNet:
    """A persistent ConvNet whose weights are replaced by a freshly initialized network each iteration.

    The embed function is built once (optionally with torch.compile), so a new network costs a
    parameter copy, not a recompilation.
    """

    def __init__(self, arch: str, dataset: Any, device: torch.device, channels_last: bool, compile: bool):
        self.arch, self.dataset, self.device = arch, dataset, device
        self.net = self._build().to(device)
        if channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        self.net.requires_grad_(False)
        self.embed: Embed = self._compiled() if compile else self.net.embed

    def _build(self) -> nn.Module:
        c, h, _ = self.dataset.image_shape
        return get_model(self.arch, c, self.dataset.num_classes, h)

    def _compiled(self) -> Embed:
        """torch.compile of embed that falls back to eager (with a warning) if compilation fails."""
        compiled = torch.compile(self.net.embed, dynamic=False)
        state = {"fn": compiled}

        def embed(x: Tensor) -> Tensor:
            try:
                return state["fn"](x)
            except Exception as exc:  # noqa: BLE001 - a backend failure (no compiler, ...) means: run eagerly
                if state["fn"] is not compiled:
                    raise
                log.warning("torch.compile failed (%s: %s); DM runs eagerly", type(exc).__name__, exc)
                state["fn"] = self.net.embed
                return self.net.embed(x)

        return embed

    def renew(self) -> None:
        """Load the weights of a freshly initialized network (drawn from the global torch RNG)."""
        fresh = self._build().state_dict()
        with torch.no_grad():
            for name, t in self.net.state_dict().items():
                t.copy_(fresh[name])


# ---------------------------------------------------------------- the entry point

@register("dm", "distill", budgets=BUDGETS, spec=SPEC,
          paper="DM (Zhao & Bilen, WACV 2023) reference code; 001 §4.1 / Tab. 1")
def distill_dm(dataset: Any, ipc: int, *, seed: int, device: Any, budget: str, settings: dict[str, Any],
               run: RunOptions) -> tuple[Any, History]:
    """DM: match class-wise mean embeddings of real and synthetic images under fresh random ConvNets."""
    s, dev = settings, resolve_device(device)
    data = dataset.to(dev)
    precision = resolve_precision(s["precision"], dev)
    layout = run_layout(s["channels_last"], precision)
    images, labels = init_synthetic(data, ipc, seed=seed, init=s["init"], factor=s["factor"], device=dev)
    images = _to_format(images, layout).requires_grad_(True)
    opt = torch.optim.SGD([images], lr=s["lr_img"], momentum=s["momentum"])
    fresh = ReinitNet(s["arch"], data, dev, layout, s["compile"])
    strategy = s["dsa_strategy"]
    aug = dict(draws=s["dsa_draws"], align_corners=s["dsa_align_corners"])
    # DM draws its own uniform batches; sampler="dream" plugs in DREAM's representative batches
    sampler = make_sampler(s, data, s["batch_real"], seed) if s["sampler"] != "random" else None
    state: dict[str, Any] = {"images": images, "optimizer": opt, **({"sampler": sampler} if sampler else {})}

    def step(it: int) -> Tensor:
        g = seed_iteration(seed, it)
        fresh.renew()
        if sampler:
            sampler.bind(fresh.net)
            real = [sampler.sample(c, it) for c in range(data.num_classes)]
        else:
            real = sample_real(data, s["batch_real"], g)
        seeds = class_seeds(g, data.num_classes, shared=s["class_seeds"] == "shared")
        mean_real = real_class_means(fresh.embed, real, seeds, strategy, s["real_chunk"], layout, precision, **aug)
        syn = syn_by_class(images, ipc, data.num_classes, s["factor"], data.image_size)
        loss = dm_loss(mean_real, syn_class_means(fresh.embed, syn, seeds, strategy, layout, **aug))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.detach()

    def current(state: dict[str, Any] | None = None) -> Any:
        return build_synset(images, labels, data, method="dm", settings=s, seed=seed, budget=budget,
                            factor=s["factor"], real_precision=precision)

    evaluate = in_loop_eval(current, data, dev, arch=s["arch"], seeds=s["eval_seeds"], dsa=strategy is not None)
    history = run_loop(step, state, method="dm", settings=s, n_iters=s["iterations"], run=run, eval_fn=evaluate,
                       identity=dict(dataset=data.name, ipc=ipc, seed=seed, budget=budget))
    return current(), history
