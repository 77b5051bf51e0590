"""The training data pipeline: dataset -> seeded augmentation -> deterministic batches (no model code).

Data order is a pure function of ``(seed, epoch)`` and each sample's augmentation a pure function
of ``(seed, position in the stream)``, so resuming, the number of DataLoader workers and the number
of processes do not change what the model sees. The Keras trainer shares this module.

A corrupt sample (a :class:`reproduce.datasets.DatasetError` while reading it) stops the run with a
one-line error naming the file (``on_error: error``, the default), or, with ``on_error: skip``,
is replaced by the next readable sample of the dataset *at the same stream position*: the
augmentation seed and every later position stay as they were, so a skip never changes which
later samples are drawn and a resumed run stays bit-identical. Skipped files travel with their
batch back to the training loop, which counts them in the log, the checkpoint and the report.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from reference_models.preprocessing import Preprocessing

from ..transforms import TrainTransform
from .config import Config, ConfigError, parse_config

__all__ = ["DeterministicBatchSampler", "AugmentedDataset", "Batch", "collate", "build_train_dataset",
           "build_transform", "build_preprocessing", "build_loader", "TrainingDataError", "iteration_batches"]


class TrainingDataError(ConfigError):
    """A corrupt training sample with ``on_error: error``: one line naming the file."""


class DeterministicBatchSampler:
    """Yields this process's micro-batches for iterations ``[start_iter, max_iter)``.

    The stream of samples is position ``p = 0, 1, 2, ...``; position ``p`` is sample
    ``perm(seed, p // n)[p % n]`` (a fresh permutation per epoch, a function of ``(seed, epoch)``).
    Iteration ``t`` takes positions ``[t B, (t+1) B)`` (``B`` = global batch); process ``r`` of ``W``
    takes the ``r``-th contiguous share, cut into ``accum_steps`` micro-batches. Items are
    ``(index, position)``; the position seeds the sample's augmentation.
    """

    def __init__(self, n: int, *, seed: int, global_batch: int, accum_steps: int, rank: int = 0, world: int = 1,
                 start_iter: int = 0, max_iter: int, shuffle: bool = True) -> None:
        if n <= 0:
            raise ConfigError("the training set is empty")
        if global_batch % (world * accum_steps):
            raise ConfigError(f"batch size {global_batch} is not divisible by processes ({world}) x accumulation "
                              f"steps ({accum_steps})")
        self.n, self.seed, self.global_batch, self.accum = n, seed, global_batch, accum_steps
        self.rank, self.world, self.start_iter, self.max_iter, self.shuffle = rank, world, start_iter, max_iter, shuffle
        self.micro = global_batch // (world * accum_steps)
        self._perm: tuple[int, np.ndarray] | None = None

    def index(self, position: int) -> int:
        epoch, offset = divmod(position, self.n)
        if not self.shuffle:
            return offset
        if self._perm is None or self._perm[0] != epoch:
            self._perm = (epoch, np.random.default_rng([self.seed, 0x5EED, epoch]).permutation(self.n))
        return int(self._perm[1][offset])

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        share = self.global_batch // self.world
        for it in range(self.start_iter, self.max_iter):
            base = it * self.global_batch + self.rank * share
            for a in range(self.accum):
                positions = range(base + a * self.micro, base + (a + 1) * self.micro)
                yield [(self.index(p), p) for p in positions]

    def __len__(self) -> int:
        return max(self.max_iter - self.start_iter, 0) * self.accum


class Sample(NamedTuple):
    image: Any
    label: Any
    skipped: tuple[str, ...]       # "path: problem" of corrupt samples replaced by this one
    error: str | None              # on_error "error": the corrupt sample's one-line message


class Batch(NamedTuple):
    images: torch.Tensor
    labels: torch.Tensor
    skipped: tuple[str, ...]


def iteration_batches(batches: Iterator[Any], accum: int, iteration: int, logger: Any,
                      skipped: list) -> list[tuple[Any, Any]]:
    """The ``accum`` micro-batches of (0-based) ``iteration`` from the loader's iterator, as (images, labels).

    A sample the loader skipped as corrupt (``on_error: skip``) is written to ``logger`` and appended to
    ``skipped``; a corrupt one with ``on_error: error`` raises :class:`TrainingDataError` naming the file.
    """
    micro = []
    for _ in range(accum):
        batch = next(batches)
        if not isinstance(batch, Batch):
            raise TrainingDataError(f"{batch.error} (iteration {iteration + 1}; set on_error: skip or pass "
                                    "--on-error skip to skip corrupt samples and count them)")
        micro.append((batch.images, batch.labels))
        for problem in batch.skipped:
            logger.write(f"skipped a corrupt sample: {problem}")
            skipped.append(problem)
    return micro


class AugmentedDataset:
    """``(index, position) -> Sample`` with the augmentation seeded by ``(seed, position)``.

    Map-style (``__len__``/``__getitem__``): a torch DataLoader or any other batching loop can drive it.
    """

    def __init__(self, base: Any, transform: TrainTransform, seed: int, on_error: str = "error") -> None:
        self.base, self.transform, self.seed, self.on_error = base, transform, seed, on_error

    def __len__(self) -> int:
        return len(self.base)

    def _read(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        load = getattr(self.base, "load", None)  # the readers' strict read (no transform, no own skipping)
        image, label, _ = load(index) if load is not None else self.base[index]
        return image, label

    def __getitem__(self, item: tuple[int, int]) -> Sample:
        from ..datasets import DatasetError

        index, position = item
        n = len(self.base)
        skipped: list[str] = []
        for attempt in range(n):
            try:
                image, label = self._read((index + attempt) % n)
                break
            except DatasetError as e:
                if self.on_error != "skip":
                    return Sample(None, None, (), str(e))
                skipped.append(str(e))
        else:
            return Sample(None, None, tuple(skipped), f"no readable sample among the {n} of the training set")
        x, y = self.transform(image, label, np.random.default_rng([self.seed, 0xA06, position]))
        return Sample(x, y, tuple(skipped), None)


def collate(samples: list[Sample]) -> Batch | Sample:
    """Stack a micro-batch; a sample that carries an error is passed on for the loop to raise."""
    for s in samples:
        if s.error is not None:
            return s
    skipped = tuple(x for s in samples for x in s.skipped)
    return Batch(torch.stack([s.image for s in samples]), torch.stack([s.label for s in samples]), skipped)


def build_train_dataset(cfg: Config | Mapping[str, Any]) -> Any:
    """The raw training reader named by ``cfg.data`` (``dataset``, ``root``, ``split``, ``kwargs``)."""
    data = parse_config(cfg).data
    kwargs = dict(data.kwargs)
    if data.dataset == "shapes":
        from ..shapes import ShapesDataset

        return ShapesDataset(**kwargs)
    from ..datasets import DatasetError, build_dataset

    if not data.root:
        raise ConfigError(f"data.root is not set for dataset {data.dataset!r} (pass --data-root PATH)")
    try:
        return build_dataset(data.dataset, root=data.root, split=data.split, **kwargs)
    except (DatasetError, FileNotFoundError) as e:
        hint = data.how_to_get or _registry_hint(data.dataset, data.root)
        raise ConfigError(f"{e}" + (f". {hint}" if hint else "")) from None
    except (ValueError, TypeError) as e:
        raise ConfigError(f"data: {e}") from None


def build_preprocessing(cfg: Config | Mapping[str, Any]) -> Preprocessing:
    p = parse_config(cfg).preprocessing
    return Preprocessing(channel_order=p.channel_order, mean=tuple(p.mean), std=tuple(p.std), scale=float(p.scale))


def build_transform(cfg: Config | Mapping[str, Any]) -> TrainTransform:
    cfg = parse_config(cfg)
    aug = cfg.augment
    try:
        return TrainTransform(
            preprocessing=build_preprocessing(cfg),
            crop_size=aug.crop_size if isinstance(aug.crop_size, int) else tuple(aug.crop_size),
            scales=tuple(aug.scales) if aug.scales is not None else None,
            scale_range=tuple(aug.scale_range) if aug.scale_range is not None else None,
            flip=aug.flip,
            resize=aug.resize,
            ignore_index=cfg.ignore_index,
        )
    except ValueError as e:
        raise ConfigError(f"augment: {e}") from None


def build_loader(cfg: Config, base: Any, *, rank: int, world: int, start_iter: int,
                 pin_memory: bool = False) -> tuple[torch.utils.data.DataLoader, DeterministicBatchSampler]:
    """This process's DataLoader of :class:`Batch` micro-batches from ``start_iter`` on."""
    solver = cfg.solver
    dataset = AugmentedDataset(base, build_transform(cfg), cfg.seed, cfg.on_error)
    sampler = DeterministicBatchSampler(len(base), seed=cfg.seed, global_batch=solver.batch_size,
                                        accum_steps=solver.accum_steps, rank=rank, world=world,
                                        start_iter=start_iter, max_iter=solver.iterations)
    workers = cfg.workers
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=sampler, num_workers=workers, pin_memory=pin_memory, collate_fn=collate,
        persistent_workers=False, prefetch_factor=4 if workers else None,
        generator=torch.Generator().manual_seed(cfg.seed),  # keeps the global torch RNG untouched (dropout)
    )
    return loader, sampler


def _registry_hint(dataset: str, root: str) -> str | None:
    """How to get ``dataset`` (a reader name) from the release registry, for the data root that holds ``root``."""
    from converters.releases import DATA_ROOT, DATASETS

    for d in DATASETS.values():
        if dataset in d.readers:
            parts, top = Path(root).parts, Path(d.folder).parts[0]
            data_root = (Path(*parts[:parts.index(top)]) or Path(".")) if top in parts else DATA_ROOT
            return d.how_to_get(data_root)
    return None
