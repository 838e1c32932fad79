"""Nights as training data: subject splits, causal feature sequences, random crops.

The held-out subject of a leave-one-subject-out fold is a constructor argument; the inner
validation subjects are drawn (seeded) from the rest. The test set is the held-out night only.
"""

from __future__ import annotations

import dataclasses
import logging
import zlib
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from sleepstream.data.folder import data_folder, load_all
from sleepstream.features import night_features, nights_features
from sleepstream.records import LABEL_MAPS, SLEEP_WAKE, LabelMap, Recording

log = logging.getLogger(__name__)

Night = tuple[NDArray[np.float32], NDArray[np.int64]]
Batch = tuple[Tensor, Tensor]


TRAINING_STARTS_S = (0.0, 2 * 3600.0, 24 * 3600.0)
"""How long before the PSG start the detector is switched on in the training sequences of a night:
at the PSG start (no history), 2 h before, and a whole day before (clipped to the first sample)."""


def night_arrays(recording: Recording, label_map: LabelMap = SLEEP_WAKE) -> Night:
    """All causal features ``(epochs, features)`` and class labels of ``label_map`` (-1 unscored;
    sleep/wake by default)."""
    features = night_features(recording).astype(np.float32)
    return features, recording.labels(label_map).astype(np.int64)


def without_counts_after(recording: Recording, cut: float) -> Recording:
    """The same night with no activity counts from ``cut`` (s) on."""
    keep = recording.count_times < cut
    return dataclasses.replace(
        recording, count_times=recording.count_times[keep], counts=recording.counts[keep]
    )


class CropDataset(Dataset[Batch]):
    """Random crops of ``length`` epochs; ``per_night`` crops per night per training epoch.

    Each night comes as several sequences (the detector switched on at different times before
    the PSG start, :data:`TRAINING_STARTS_S`); a crop picks one of them at random and starts
    anywhere from ``length // 2`` epochs before the first labelled epoch to the end, so the
    network's empty state is not tied to the moment the person went to bed.
    """

    def __init__(self, nights: Sequence[Sequence[Night]], length: int, per_night: int):
        self.nights = [list(variants) for variants in nights]
        self.length = length
        self.per_night = per_night
        # Where each sequence's labels begin (after its unlabelled hours before the PSG start).
        self.first_labelled = [
            [int(np.argmax(y >= 0)) if (y >= 0).any() else 0 for _, y in variants]
            for variants in self.nights
        ]

    def __len__(self) -> int:
        return len(self.nights) * self.per_night

    def __getitem__(self, index: int) -> Batch:
        night = index // self.per_night
        variant = int(torch.randint(0, len(self.nights[night]), (1,)))
        x, y = self.nights[night][variant]
        first = max(0, self.first_labelled[night][variant] - self.length // 2)
        last = max(first, len(y) - self.length)
        start = int(torch.randint(first, last + 1, (1,)))
        end = start + self.length
        return torch.from_numpy(x[start:end]), torch.from_numpy(y[start:end])


class NightDataset(Dataset[Batch]):
    """Whole nights, in order."""

    def __init__(self, nights: Sequence[Night]):
        self.nights = list(nights)

    def __len__(self) -> int:
        return len(self.nights)

    def __getitem__(self, index: int) -> Batch:
        x, y = self.nights[index]
        return torch.from_numpy(x), torch.from_numpy(y)


def pad_collate(items: Sequence[Batch]) -> Batch:
    """Pad to the longest sequence: features NaN (normalised to 0), labels -1 (ignored)."""
    longest = max(len(y) for _, y in items)
    n_features = items[0][0].shape[1]
    x = torch.full((len(items), longest, n_features), float("nan"))
    y = torch.full((len(items), longest), -1, dtype=torch.int64)
    for i, (xi, yi) in enumerate(items):
        x[i, : len(yi)] = xi
        y[i, : len(yi)] = yi
    return x, y


class SleepDataModule(L.LightningDataModule):
    """The sleep-accel nights, split by subject.

    Parameters
    ----------
    data_dir
        The data folder; ``$SLEEPSTREAM_DATA`` when not given.
    held_out
        Subject id of the test night (one LOSO fold); ``None`` trains on every subject but the
        validation ones (the shipped model).
    val_subjects
        How many subjects (never the held-out one) form the inner validation split.
    crop_epochs, crops_per_night
        Length in 30 s epochs and number per night of the random training crops per epoch.
    batch_size
        Crops per training batch.
    missing_counts_copies
        Extra copies of each training night whose activity counts stop at a random time (as
        when a watch stops sending motion), so the network learns to carry on from heart rate.
    seed
        Seeds the choice of validation subjects (together with the subjects available) and of
        the cut times.
    task
        The labels: a name of :data:`~sleepstream.records.LABEL_MAPS` (``sleep_wake``; the stage
        networks train on ``wake_light_deep_rem``, from which wake / NREM / REM follows).
    """

    def __init__(
        self,
        data_dir: str | None = None,
        held_out: str | None = None,
        val_subjects: int = 5,
        crop_epochs: int = 240,
        crops_per_night: int = 4,
        batch_size: int = 16,
        missing_counts_copies: int = 0,
        seed: int = 0,
        task: str = "sleep_wake",
    ):
        super().__init__()
        if task not in LABEL_MAPS:
            raise ValueError(f"Unknown task {task!r}; known: {list(LABEL_MAPS)}")
        self.label_map = LABEL_MAPS[task]
        self.data_dir = data_dir
        self.held_out = held_out
        self.val_subjects = val_subjects
        self.crop_epochs = crop_epochs
        self.crops_per_night = crops_per_night
        self.batch_size = batch_size
        self.missing_counts_copies = missing_counts_copies
        self.seed = seed
        self.recordings: list[Recording] | None = None
        self.train: list[Recording] = []
        self.val: list[Recording] = []
        self.test: list[Recording] = []

    def use_recordings(self, recordings: Sequence[Recording]) -> None:
        """Use these nights instead of reading ``data_dir`` (the LOSO driver's training set)."""
        self.recordings = list(recordings)

    def prepare_data(self) -> None:
        if self.recordings is None:
            data_folder(self.data_dir)  # fails early, saying how to get the data

    def setup(self, stage: str | None = None) -> None:
        if self.train:
            return
        if self.recordings is None:
            self.recordings = load_all(Path(self.data_dir) if self.data_dir else None)
        ids = [r.subject_id for r in self.recordings]
        if self.held_out is not None and self.held_out not in ids:
            raise ValueError(f"held_out subject {self.held_out!r} is not among {ids}")
        rest = [s for s in ids if s != self.held_out]
        if not 0 <= self.val_subjects < len(rest):
            raise ValueError(
                f"val_subjects={self.val_subjects} leaves no training subject out of {len(rest)}"
            )
        # The draw depends on the subjects available, so each leave-one-out fold validates
        # (and later chooses its thresholds) on different nights.
        rng = np.random.default_rng([self.seed, zlib.crc32(",".join(sorted(rest)).encode())])
        val_ids = set(rng.choice(rest, size=self.val_subjects, replace=False).tolist())
        self.train = [
            r for r in self.recordings if r.subject_id in rest and r.subject_id not in val_ids
        ]
        self.val = [r for r in self.recordings if r.subject_id in val_ids]
        self.test = [r for r in self.recordings if r.subject_id == self.held_out]
        log.info(
            "Split: %d training, %d validation (%s), test %s",
            len(self.train),
            len(self.val),
            ",".join(sorted(val_ids)),
            self.held_out,
        )

    def _augmented_train(self) -> list[Recording]:
        copies = []
        for copy_index in range(self.missing_counts_copies):
            for r in self.train:
                # Seeded per subject, so a night's copy is the same in every fold (and cached).
                rng = np.random.default_rng(
                    [self.seed + 1, zlib.crc32(r.subject_id.encode()), copy_index]
                )
                cut = r.epoch_times[0] + rng.uniform(0.1, 0.9) * (r.end_time - r.epoch_times[0])
                copies.append(without_counts_after(r, cut))
        return self.train + copies

    def train_sequences(self) -> list[list[Recording]]:
        return [
            [r.switched_on_before(seconds) for seconds in TRAINING_STARTS_S]
            for r in self._augmented_train()
        ]

    def train_labels(self) -> NDArray[np.int64]:
        """The class labels of every training night's epochs (-1 unscored), once per night."""
        return np.concatenate([r.labels(self.label_map) for r in self.train]).astype(np.int64)

    def train_features(self) -> NDArray[np.float64]:
        """Feature rows of every training sequence (for the input normalisation)."""
        return np.concatenate(nights_features([r for v in self.train_sequences() for r in v]))

    def train_dataloader(self) -> DataLoader[Batch]:
        dataset = CropDataset(
            [
                [night_arrays(r, self.label_map) for r in variants]
                for variants in self.train_sequences()
            ],
            self.crop_epochs,
            self.crops_per_night,
        )
        return DataLoader(dataset, self.batch_size, shuffle=True, collate_fn=pad_collate)

    def _nights(self, recordings: Sequence[Recording]) -> DataLoader[Batch]:
        dataset = NightDataset([night_arrays(r, self.label_map) for r in recordings])
        return DataLoader(dataset, batch_size=8, collate_fn=pad_collate)

    def val_dataloader(self) -> DataLoader[Batch] | list[DataLoader[Batch]]:
        return self._nights(self.val) if self.val else []

    def test_dataloader(self) -> DataLoader[Batch]:
        if not self.test:
            raise ValueError("No test night: set data.held_out to a subject id")
        return self._nights(self.test)

    def predict_dataloader(self) -> DataLoader[Batch]:
        return self._nights(self.test or self.val)
