"""Batched ten-crop prediction (section 4.1 of the paper: "the network makes a prediction by
extracting five 224×224 patches (the four corner patches and the center patch) as well as their
horizontal reflections ... and averaging the predictions made by the network's softmax layer on
the ten patches").

Images go through one DALI pipeline run per batch (decode, short side 256, centre 256×256, ten
normalised views); the model sees [B·10, 3, 224, 224] and the ten softmaxes of each image are
averaged (equal weights, as in the paper).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from .checkpoint import load_checkpoint
from .data import DataError, Problem, is_image_name
from .distributed import resolve_device
from .loader import MAX_GPU_PIPELINE_THREADS, cpu_count
from .model import AlexNetModule
from .pca import PCA
from .scan import diagnose_bytes, quiet_native_log


def tencrop_probabilities(net: nn.Module, crops: torch.Tensor, autocast: bool = False) -> torch.Tensor:
    """crops [B, 10, 3, 224, 224] (or NHWC views [B, 10, 224, 224, 3]) -> mean softmax [B, C]."""
    batch = crops.shape[0]
    if crops.shape[-1] == 3:  # NHWC from the GPU pipeline: NCHW view, channels_last memory
        crops = crops.reshape(batch * 10, *crops.shape[2:]).permute(0, 3, 1, 2)
    else:
        crops = crops.reshape(batch * 10, *crops.shape[2:])
    context = torch.autocast(crops.device.type, dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
    with context:
        logits = net(crops)
    return torch.softmax(logits.float(), dim=1).view(batch, 10, -1).mean(dim=1)


def expand_paths(items: Sequence[str | Path]) -> list[str]:
    """Files as given; a directory expands to its image files (sorted, not recursive)."""
    paths = []
    for item in items:
        item = Path(item)
        if item.is_dir():
            found = sorted(str(p) for p in item.iterdir() if p.is_file() and is_image_name(p.name))
            if not found:
                raise DataError(f"{item} holds no image files")
            paths += found
        else:
            paths.append(str(item))
    return paths


def full_names(class_names: Sequence[str], count: int) -> tuple[str, ...]:
    """One human-readable name per class where the data gave them (ImageNet's synset mapping),
    else one empty name per class."""
    return tuple(class_names) or ("",) * count


class Predictor:
    """Ten-crop predictions from a live model or a checkpoint, in batches of `batch_size` images."""

    def __init__(self, net: nn.Module, pca: PCA, classes: Sequence[str], *, device: str = "auto",
                 batch_size: int = 32, num_threads: int = 0, fast: bool | None = None,
                 class_names: Sequence[str] = ()):
        self.kind = resolve_device(device)
        self.device = torch.device("cuda", torch.cuda.current_device()) if self.kind == "gpu" else torch.device("cpu")
        self.net = net.to(self.device).eval()
        # bf16 autocast: the usual winner on tensor-core GPUs; plain fp32 on the CPU. On the GPU the
        # crops arrive NHWC, so the model is channels_last whatever the precision.
        self.fast = self.kind == "gpu" if fast is None else fast
        if self.kind == "gpu":
            self.net = self.net.to(memory_format=torch.channels_last)
        self.pca, self.classes = pca, tuple(classes)
        self.class_names = full_names(class_names, len(self.classes))
        self.batch_size = batch_size
        self.num_threads = num_threads or (min(MAX_GPU_PIPELINE_THREADS, cpu_count()) if self.kind == "gpu"
                                            else cpu_count())
        self._pipe = None

    @classmethod
    def from_checkpoint(cls, path: str | Path, **options) -> Predictor:
        state = load_checkpoint(path)
        config = state.get("config", {})
        net = AlexNetModule(len(state["classes"]), groups=config.get("groups", 1), dropout=config.get("dropout", 0.5))
        net.load_state_dict(state["model"])
        return cls(net, PCA.from_dict(state["pca"]), state["classes"], class_names=state.get("class_names", ()),
                   **options)

    def _pipeline(self):
        if self._pipe is None:
            from .pipelines.tencrop import tencrop_pipeline

            self._pipe = tencrop_pipeline(
                device=self.kind, mean=self.pca.mean, batch_size=self.batch_size, num_threads=self.num_threads,
                device_id=self.device.index if self.kind == "gpu" else None,
                prefetch_queue_depth=1, exec_pipelined=False, exec_async=False,
            )
            self._pipe.build()
        return self._pipe

    def crops(self, blobs: Sequence[bytes], names: Sequence[str]) -> torch.Tensor:
        """Encoded images -> [B, 10, ...] views on the model's device. A file DALI cannot decode is
        named in a DataError (and the pipeline rebuilt: after an error it stays broken)."""
        from nvidia.dali.plugin.pytorch import feed_ndarray
        from .pipelines.tencrop import ENCODED_INPUT

        pipe = self._pipeline()
        try:
            with quiet_native_log():  # a bad file: our DataError names it, DALI's own [ERROR] lines stay out
                pipe.feed_input(ENCODED_INPUT, [np.frombuffer(b, dtype=np.uint8) for b in blobs])
                (output,) = pipe.run()
        except RuntimeError:
            self._pipe = None
            problems = [Problem(name, reason) for name, blob in zip(names, blobs) if (reason := diagnose_bytes(blob))]
            raise DataError(problems or [Problem(", ".join(names), "one of these cannot be decoded by DALI")],
                            "images that cannot be decoded") from None
        tensor = output.as_tensor()
        crops = torch.empty(tensor.shape(), dtype=torch.float32, device=self.device)
        if self.kind == "gpu":
            stream = torch.cuda.current_stream()
            feed_ndarray(tensor, crops, cuda_stream=stream)
            stream.synchronize()  # the next run() reuses DALI's buffer: the copy must be done by then
        else:
            feed_ndarray(tensor, crops)
        return crops

    @torch.inference_mode()
    def predict_bytes(self, blobs: Sequence[bytes], names: Sequence[str] | None = None) -> np.ndarray:
        """[N, C] probabilities, each row the ten-crop mean of the softmax."""
        names = list(names) if names is not None else [f"<image {i}>" for i in range(len(blobs))]
        for blob, name in zip(blobs, names):
            if not blob:
                raise DataError([Problem(name, "empty file (0 bytes)")])
        rows = []
        for start in range(0, len(blobs), self.batch_size):
            crops = self.crops(blobs[start:start + self.batch_size], names[start:start + self.batch_size])
            rows.append(tencrop_probabilities(self.net, crops, autocast=self.fast).cpu())
        return torch.cat(rows).numpy() if rows else np.zeros((0, len(self.classes)), dtype=np.float32)

    def predict_files(self, paths: Sequence[str | Path]) -> np.ndarray:
        blobs, problems = [], []
        for path in paths:
            try:
                blobs.append(Path(path).read_bytes())
            except FileNotFoundError:
                problems.append(Problem(str(path), "no such file"))
            except IsADirectoryError:
                problems.append(Problem(str(path), "is a folder, not an image file"))
            except OSError as e:
                problems.append(Problem(str(path), f"cannot be read: {e.strerror or e}"))
        if problems:
            raise DataError(problems, "images that cannot be read")
        return self.predict_bytes(blobs, [str(p) for p in paths])

    def top(self, probabilities: np.ndarray, n: int) -> list[tuple[str, float]]:
        order = np.argsort(-probabilities, kind="stable")[:n]
        return [(self.classes[i], float(probabilities[i])) for i in order]


@torch.inference_mode()
def evaluate_split(net: nn.Module, pca: PCA, split, *, ten_crop: bool = False, device: str = "auto",
                   batch_size: int = 32, num_threads: int = 0, fast: bool | None = None) -> dict:
    """Top-1 / top-5 accuracy (and error, the paper's metric) and loss over a labelled split,
    with the centre crop or the ten-crop average."""
    from nvidia.dali.plugin.pytorch import LastBatchPolicy

    from .loader import DaliLoader
    from .pipelines import evaluation_pipeline, tencrop_pipeline

    predictor = Predictor(net, pca, split.classes, device=device, batch_size=batch_size, num_threads=num_threads,
                          fast=fast)
    make = tencrop_pipeline if ten_crop else evaluation_pipeline
    pipe = make(split.files, split.labels, device=predictor.kind, mean=pca.mean, batch_size=batch_size,
                num_threads=predictor.num_threads, device_id=predictor.device.index if predictor.kind == "gpu" else None)
    pipe.build()
    totals = np.zeros(4)  # loss sum, top-1 hits, top-5 hits, images
    for images, labels in DaliLoader(pipe, LastBatchPolicy.PARTIAL):
        if ten_crop:
            probs = tencrop_probabilities(predictor.net, images, autocast=predictor.fast)
        else:
            with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=predictor.fast):
                probs = torch.softmax(predictor.net(images).float(), dim=1)
        labels = labels.to(probs.device)
        k = min(5, probs.shape[1])
        hits = probs.topk(k, dim=1).indices.eq(labels.view(-1, 1))
        true_prob = probs.gather(1, labels.view(-1, 1)).clamp_min(1e-12)
        totals += [-true_prob.log().sum().item(), hits[:, 0].sum().item(), hits.any(dim=1).sum().item(), len(labels)]
    count = max(totals[3], 1)
    top1, top5 = totals[1] / count, totals[2] / count
    return {"images": int(totals[3]), "loss": totals[0] / count, "top1": top1, "top5": top5,
            "top1_error": 1 - top1, "top5_error": 1 - top5, "ten_crop": ten_crop}
