"""The item protocol every training dataset shares with the seeding samplers (data.resumable_sampler)."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from data.image_io import ImageReadError

logger = logging.getLogger("upforge")


class SeededItems(Dataset):
    """``dataset[item]`` for an index, an ``(index, sample_seed)`` pair or an ``(index,
    sample_seed, knobs)`` triple: a training sample is made from its own generator, and an
    unreadable one is skipped (with a warning, counted in ``num_skipped``) for the next readable one.

    Subclasses set ``phase`` and implement :meth:`_sample`, :meth:`_error_note`,
    :meth:`_skip_warning` and :meth:`_first_name`; ``item_noun`` names their items in messages.
    """

    item_noun = "images"

    def __init__(self) -> None:
        self._knobs: dict[str, Any] = {}  # the live options of the sample being made
        self.num_skipped = 0
        self._unreadable: set[int] = set()

    def _sample(self, index: int, rng: np.random.Generator | None) -> dict[str, Any]:
        """Item ``index``, made from ``rng`` in training (None otherwise)."""
        raise NotImplementedError

    def _error_note(self, index: int, err: Exception) -> str | None:
        """A note naming item ``index``'s files for an error that does not name them, else None."""
        return None

    def _make(self, index: int, rng: np.random.Generator | None) -> dict[str, Any]:
        """:meth:`_sample`, with :meth:`_error_note` added to an error that names no file of the
        item; a DataLoader worker's error shows it too (see data.data_loader.SampleLoader)."""
        try:
            return self._sample(index, rng)
        except ImageReadError:  # names its file
            raise
        except Exception as err:
            note = self._error_note(index, err)
            if note:
                err.add_note(note)
            raise

    def _skip_warning(self, index: int, err: ImageReadError) -> str:
        """The warning logged when item ``index`` is skipped for ``err``."""
        return f"skipping unreadable training image: {err}"

    def _first_name(self) -> str:
        """The first item, named in the error when no item can be read."""
        raise NotImplementedError

    def __getitem__(self, item: int | tuple[int, int] | tuple[int, int, dict]) -> dict[str, Any]:
        knobs: dict[str, Any] = {}
        if isinstance(item, (tuple, list)):
            index, seed = int(item[0]), int(item[1])
            knobs = item[2] if len(item) > 2 else {}
        else:
            index, seed = int(item), None
        self._knobs = knobs
        n = len(self)
        if not 0 <= index < n:
            raise IndexError(f"{type(self).__name__}: index {index} out of range for {n} {self.item_noun}")
        if self.phase != "train":
            return self._make(index, None)
        if seed is None:
            # Seeded from torch's RNG so torch.manual_seed and DataLoader worker seeding decide
            # every crop and flip, which makes runs (and resumes) reproducible.
            seed = int(torch.randint(0, 2**62, (1,)).item())
        rng = np.random.default_rng(seed)
        for step in range(n):
            i = (index + step) % n
            if i in self._unreadable:
                continue
            try:
                return self._make(i, rng)
            except ImageReadError as err:
                self._unreadable.add(i)
                self.num_skipped += 1
                logger.warning("%s", self._skip_warning(i, err))
        raise RuntimeError(f"{type(self).__name__}: none of the {n} training {self.item_noun} could be read "
                           f"(first: '{self._first_name()}'); see the warnings above for the reasons")
