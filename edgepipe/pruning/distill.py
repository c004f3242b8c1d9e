"""Recover a pruned model's accuracy by distilling from the unpruned one on the user's data.

Knowledge distillation needs no labels (the teacher provides the targets), so it
works on a calibration set too; labels, when present, add a cross-entropy term.
Classifier logits are matched with temperature-scaled KL divergence, any other
output (embeddings, boxes, feature maps) with mean squared error.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from time import perf_counter
from typing import Any, Literal

import numpy as np
from pydantic import Field

from edgepipe.artifact import TensorSpec
from edgepipe.data.samples import LabelledSample
from edgepipe.settings import StrictModel


class FinetuneSettings(StrictModel):
    epochs: int = Field(0, ge=0, description="0: no fine-tuning")
    max_steps: int | None = Field(None, ge=1, description="stop early after this many optimizer steps")
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    batch_size: int = Field(32, ge=1)
    temperature: float = Field(4.0, gt=0)
    alpha: float = Field(0.7, ge=0, le=1, description="weight of the distillation term when labels exist")
    loss: Literal["auto", "kl", "mse"] = "auto"
    samples: int = Field(10_000, ge=1, description="most training samples read per epoch")
    seed: int = 0


@dataclass(frozen=True)
class Batch:
    inputs: tuple  # torch tensors in the model's input order
    labels: Any  # torch int64 tensor, or None


def batches(samples: Iterable[LabelledSample], specs: tuple[TensorSpec, ...], size: int) -> Iterator[Batch]:
    """Stack single samples (each with the model's batch-1 shape) into training batches."""
    import torch

    pending: list[LabelledSample] = []

    def stacked() -> Batch:
        inputs = tuple(torch.from_numpy(np.concatenate([s.feed[spec.name] for s in pending]))
                       for spec in specs)
        labels = None
        if all(s.label is not None for s in pending):
            labels = torch.tensor([s.label for s in pending], dtype=torch.int64)
        return Batch(inputs, labels)

    for sample in samples:
        pending.append(sample)
        if len(pending) == size:
            yield stacked()
            pending = []
    if pending:
        yield stacked()


def _first(output):
    return output[0] if isinstance(output, list | tuple) else output


def _loss(student_out, teacher_out, labels, settings: FinetuneSettings):
    import torch.nn.functional as F

    s, t = _first(student_out), _first(teacher_out)
    kind = settings.loss
    if kind == "auto":
        kind = "kl" if s.dim() == 2 and s.shape[1] > 1 else "mse"
    if kind == "kl":
        temp = settings.temperature
        distill = F.kl_div(F.log_softmax(s / temp, dim=1), F.softmax(t / temp, dim=1),
                           reduction="batchmean") * temp * temp
    else:
        outs = student_out if isinstance(student_out, list | tuple) else [student_out]
        refs = teacher_out if isinstance(teacher_out, list | tuple) else [teacher_out]
        distill = sum(F.mse_loss(a, b) for a, b in zip(outs, refs, strict=True))
    if labels is None or kind != "kl":
        return distill
    return settings.alpha * distill + (1 - settings.alpha) * F.cross_entropy(s, labels)


def distill(student, teacher, data: Callable[[], Iterator[Batch]], settings: FinetuneSettings,
            on_epoch: Callable[[int], None] = lambda epoch: None) -> dict[str, Any]:
    """Fine-tune `student` in place; returns what happened, for the report."""
    import torch

    torch.manual_seed(settings.seed)
    teacher.eval()
    optimizer = torch.optim.AdamW(student.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    steps, losses, labelled, seen = 0, [], False, 0
    started = perf_counter()
    for epoch in range(settings.epochs):
        on_epoch(epoch)
        student.train()
        for batch in data():
            if len(batch.inputs[0]) < 2:
                continue  # a trailing single sample: BatchNorm cannot train on a batch of one
            labelled = labelled or batch.labels is not None
            with torch.no_grad():
                target = teacher(*batch.inputs)
            optimizer.zero_grad()
            loss = _loss(student(*batch.inputs), target, batch.labels, settings)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            seen += len(batch.inputs[0]) if epoch == 0 else 0
            steps += 1
            if settings.max_steps is not None and steps >= settings.max_steps:
                break
        if settings.max_steps is not None and steps >= settings.max_steps:
            break
    student.eval()
    window = max(1, min(10, len(losses) // 4))
    return {"epochs": settings.epochs, "steps": steps, "samples_per_epoch": seen,
            "seconds": round(perf_counter() - started, 3),
            "labels_used": labelled, "lr": settings.lr, "temperature": settings.temperature,
            "loss_first": float(np.mean(losses[:window])) if losses else None,
            "loss_last": float(np.mean(losses[-window:])) if losses else None}


def taylor_gradients(data: Callable[[], Iterator[Batch]], limit: int = 8) -> Callable[[Any], None]:
    """Backward passes that Taylor importance reads from `.grad`.

    Not the distillation loss: before pruning the student is the teacher, so that
    loss and its gradient are zero. Labels where given, else the model's own top-1
    as pseudo-labels (a classifier), else the output's energy.
    """
    def run(model) -> None:
        import torch.nn.functional as F

        for index, batch in enumerate(data()):
            if index == limit:
                break
            out = _first(model(*batch.inputs))
            if out.dim() == 2 and out.shape[1] > 1:
                labels = batch.labels if batch.labels is not None else out.detach().argmax(1)
                F.cross_entropy(out, labels).backward()
            else:
                out.pow(2).mean().backward()
    return run
