"""Training images/sec: the model fed from memory (`model-only`) against the model fed by the real
DALI pipeline (`end-to-end`); their ratio shows how much the input pipeline stalls training.
On a GPU the rows repeat for fp32, bf16 autocast, channels_last and torch.compile.

    python benchmarks/train.py [--device cpu|gpu|all] [--data DIR] [--images N] [--batch-size B] [--json PATH]
"""

from __future__ import annotations

import torch
from torch import nn

from common import base_parser, data_files, report, timed, wants

MEAN = (0.485, 0.456, 0.406)
EIGVAL = (0.2175, 0.0188, 0.0045)
EIGVEC = ((-0.5675, 0.7192, 0.4009), (-0.5808, -0.0045, -0.8140), (-0.5836, -0.6948, 0.4203))
CLASSES = 1000

# (name, bf16 autocast, channels_last model, torch.compile). On a GPU `alexnet-dali train` runs
# fp32+channels_last, or bf16+channels_last with --precision bf16.
GPU_VARIANTS = [("fp32", False, False, False), ("fp32+channels_last", False, True, False),
                ("bf16+channels_last", True, True, False), ("bf16+channels_last+compile", True, True, True)]


def make_step(net, optimizer, bf16: bool):
    """The trainer's step (alexnet_dali.train.train_one_epoch) without its bookkeeping."""
    from alexnet_dali.train import autocast

    criterion = nn.CrossEntropyLoss()
    precision = "bf16" if bf16 else "fp32"

    def step(images, labels):
        with autocast(images, precision):
            loss = criterion(net(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def build(device: torch.device, channels_last: bool, compiled: bool):
    from alexnet_dali.model import AlexNetModule

    net = AlexNetModule(CLASSES).to(device)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(net.parameters(), lr=1e-4, momentum=0.9, weight_decay=5e-4)
    return (torch.compile(net) if compiled else net), optimizer


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


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


def loader_for(files, kind: str, batch_size: int):
    from alexnet_dali.data import Split
    from alexnet_dali.distributed import DistInfo
    from alexnet_dali.loader import LoaderSettings, dali_threads, training_loader
    from alexnet_dali.pca import PCA

    dist_info = DistInfo(0, 0, 1, 1, torch.device("cuda", 0) if kind == "gpu" else torch.device("cpu"))
    split = Split("train", tuple(files), tuple(i % CLASSES for i in range(len(files))), tuple(map(str, range(CLASSES))))
    settings = LoaderSettings(batch_size, dali_threads(0, dist_info), 2, 0, 0.1)
    return training_loader(split, PCA(MEAN, EIGVAL, EIGVEC), settings, dist_info), settings.num_threads


def main(argv=None):
    parser = base_parser(__doc__.split("\n\n")[0])
    parser.set_defaults(images=256, batch_size=32)
    args = parser.parse_args(argv)
    files = data_files(args)
    rows, notes = [], []
    plans = []
    if wants(args, "cpu"):
        plans.append(("cpu", [("fp32", False, False, False)]))
    if wants(args, "gpu"):
        torch.backends.cudnn.benchmark = True
        plans.append(("gpu", GPU_VARIANTS))
    for kind, variants in plans:
        device = torch.device("cuda", 0) if kind == "gpu" else torch.device("cpu")
        loader, dali_threads = loader_for(files, kind, args.batch_size)
        images_per_epoch = len(loader) * args.batch_size
        for name, bf16, channels_last, compiled in variants:
            net, optimizer = build(device, channels_last, compiled)
            step = make_step(net, optimizer, bf16)
            run, n = model_only(step, device, args.batch_size, images_per_epoch)
            alone = timed(run, n, args.trials, warmup=run)
            fed = timed(end_to_end(step, device, loader), images_per_epoch, args.trials,
                        warmup=end_to_end(step, device, loader))
            ratio = fed["images_per_sec"] / alone["images_per_sec"]
            common = {"device": kind, "variant": name, "torch_threads": torch.get_num_threads(),
                      "dali_threads": dali_threads}
            rows.append({"name": f"model-only {name}", **common, **alone})
            rows.append({"name": f"end-to-end {name}", **common, **fed, "fraction_of_model_only": round(ratio, 3)})
            notes.append(f"{kind} {name}: end-to-end runs at {ratio:.1%} of model-only "
                         f"(data stall {max(0.0, 1 - ratio):.1%})")
    return report("AlexNet training (1000 classes)", rows, args, notes)


if __name__ == "__main__":
    main()
