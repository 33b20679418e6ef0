"""Training images/sec: the model fed from memory (`model-only`) against the model fed by the real
DALI pipeline (`end-to-end`); their ratio shows how much the input pipeline stalls training.
On a GPU the rows repeat for fp32, bf16 autocast, channels_last and torch.compile. The trainer's
own variant repeats model-only with PyTorch's default SGD (`default-sgd`) against the fused one.

    python benchmarks/train.py [--device cpu|gpu|all] [--data DIR] [--images N] [--batch-size B] [--json PATH]
                               [--profile DIR]
"""

from __future__ import annotations

import functools

import torch

from alexnet_dali.train import sgd, train_step
from common import (alexnet, base_parser, data_files, devices, parse, profile_path, report, sizes, sync,
                    timed, torch_device)
from common import training_loader

CLASSES = 1000

# (name, bf16 autocast, channels_last model, torch.compile). On a GPU `alexnet-dali train` runs
# fp32+channels_last, or bf16+channels_last with --precision bf16.
GPU_VARIANTS = [("fp32", False, False, False), ("fp32+channels_last", False, True, False),
                ("bf16+channels_last", True, True, False), ("bf16+channels_last+compile", True, True, True)]


# The variant `alexnet-dali train` runs by default, whose model-only row is repeated with
# PyTorch's default SGD implementation against the trainer's fused one
TRAINER_VARIANT = {"cpu": "fp32", "gpu": "fp32+channels_last"}


def build(device: str, channels_last: bool, compiled: bool, fused: bool = True):
    net = alexnet(CLASSES, device, channels_last)
    make = sgd if fused else torch.optim.SGD  # the trainer's, or PyTorch's default implementation
    optimizer = make(net.parameters(), lr=1e-4, momentum=0.9, weight_decay=5e-4)
    return (torch.compile(net) if compiled else net), optimizer


def model_only(step, device, batch_size: int, images: int):
    # the layout the loader delivers: NHWC memory seen as NCHW on the GPU, NCHW on the CPU
    if device.type == "cuda":
        x = (torch.randn(batch_size, 224, 224, 3, device=device) * 60).permute(0, 3, 1, 2)
    else:
        x = torch.randn(batch_size, 3, 224, 224, device=device) * 60
    y = torch.randint(0, CLASSES, (batch_size,), device=device)
    steps = max(1, images // batch_size)

    def run():
        for _ in range(steps):
            step(x, y)
        sync(device)

    return run, steps * batch_size


def end_to_end(step, device, loader):
    def run():
        for images, labels in loader:
            step(images, labels)
        sync(device)

    return run


def main(argv=None):
    parser = base_parser(__doc__.split("\n\n")[0], cpu=(256, 32), gpu=(4096, 256))
    args = parse(parser, argv)
    files = data_files(args)
    rows, notes = [], []
    for kind in devices(args):
        images, batch_size = sizes(args, kind)
        variants = GPU_VARIANTS if kind == "gpu" else [("fp32", False, False, False)]
        device = torch_device(kind)
        loader, dali_threads = training_loader(files[:images], kind, batch_size)  # threads as the trainer takes
        images_per_epoch = len(loader) * batch_size
        for name, bf16, channels_last, compiled in variants:
            net, optimizer = build(kind, channels_last, compiled)
            # the trainer's own step, without the loop's bookkeeping
            step = functools.partial(train_step, net, optimizer, precision="bf16" if bf16 else "fp32")
            run, n = model_only(step, device, batch_size, images_per_epoch)
            alone = timed(run, n, args.trials, warmup=run, profile_to=profile_path(args, f"model-only {name}"))
            fed = timed(end_to_end(step, device, loader), images_per_epoch, args.trials,
                        warmup=end_to_end(step, device, loader), profile_to=profile_path(args, f"end-to-end {name}"))
            ratio = fed["images_per_sec"] / alone["images_per_sec"]
            common = {"device": kind, "variant": name, "torch_threads": torch.get_num_threads(),
                      "dali_threads": dali_threads, "batch_size": batch_size}
            rows.append({"name": f"model-only {name}", **common, "images": n, **alone})
            rows.append({"name": f"end-to-end {name}", **common, "images": images_per_epoch, **fed,
                         "fraction_of_model_only": round(ratio, 3)})
            notes.append(f"{kind} {name}: end-to-end runs at {ratio:.1%} of model-only "
                         f"(data stall {max(0.0, 1 - ratio):.1%})")
            if name == TRAINER_VARIANT[kind]:
                net, optimizer = build(kind, channels_last, compiled, fused=False)
                step = functools.partial(train_step, net, optimizer, precision="bf16" if bf16 else "fp32")
                run, n = model_only(step, device, batch_size, images_per_epoch)
                unfused = timed(run, n, args.trials, warmup=run,
                                profile_to=profile_path(args, f"model-only {name} default-sgd"))
                rows.append({"name": f"model-only {name} default-sgd", **common, "images": n, **unfused})
                notes.append(f"{kind} {name}: model-only with the fused SGD runs at "
                             f"{alone['images_per_sec'] / unfused['images_per_sec']:.2f}x PyTorch's default SGD")
    return report("AlexNet training (1000 classes)", rows, args, notes)


if __name__ == "__main__":
    main()
