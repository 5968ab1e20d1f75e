"""Deterministic, resumable sample order and augmentation randomness.

Sample ``g`` of a run (a global counter over epochs) is image ``perm(epoch)[position]`` with
``epoch, position = divmod(g, len(dataset))``, and its random augmentation is drawn from a seed
derived from ``(seed, g)``. Both depend only on ``g``, so a run resumed at step ``s`` sees exactly
what the uninterrupted run saw, whatever the number of data-loader workers or processes.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Dataset, Sampler


def epoch_permutation(num_samples: int, *, seed: int, epoch: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(num_samples, generator=generator)


class SampleCounter(Sampler[int]):
    """Yields the global sample counters ``start, start + stride, ...`` forever.

    With ``stride = world_size`` and ``start = offset * world_size + rank``, ranks take interleaved samples.
    """

    def __init__(self, *, start: int = 0, stride: int = 1):
        self.start = start
        self.stride = stride

    def __iter__(self) -> Iterator[int]:
        counter = self.start
        while True:
            yield counter
            counter += self.stride


class SeededSamples(Dataset):
    """Wraps a data set: item ``g`` is the sample at global counter ``g``, augmented under seed ``(seed, g)``."""

    def __init__(self, dataset: Dataset, *, seed: int):
        self.dataset = dataset
        self.seed = seed
        self._permutations: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.dataset)

    def index_of(self, counter: int) -> int:
        epoch, position = divmod(counter, len(self.dataset))
        if epoch not in self._permutations:
            self._permutations = {epoch: epoch_permutation(len(self.dataset), seed=self.seed, epoch=epoch)}
        return int(self._permutations[epoch][position])

    def __getitem__(self, counter: int):
        index = self.index_of(counter)
        # fork_rng restores the caller's RNG afterwards, so workers=0 leaves dropout's randomness untouched.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed * 7_919 + counter * 104_729 + 1)
            return self.dataset[index]
