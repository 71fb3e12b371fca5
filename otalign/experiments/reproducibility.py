"""Seeding and deterministic execution of a run, without leaking global state to the caller."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from threadpoolctl import threadpool_limits

__all__ = ["SeedStreams", "seed_streams", "deterministic"]


@dataclass(frozen=True)
class SeedStreams:
    """Independent seeds derived from one run seed (numpy ``SeedSequence.spawn``)."""

    init: int  # model initialisation
    batches: int  # the order of training samples
    augment: int  # the random views of training batches


def seed_streams(seed: int) -> SeedStreams:
    """Derive the run's independent seeds from ``seed``; the same seed gives the same streams."""
    init, batches, augment = (
        int(s.generate_state(1, np.uint64)[0] >> 1) for s in np.random.SeedSequence(seed).spawn(3)
    )
    return SeedStreams(init=init, batches=batches, augment=augment)


@contextmanager
def deterministic(num_threads: Optional[int]) -> Iterator[None]:
    """Within the block: deterministic torch algorithms, ``num_threads`` torch intra-op threads
    and at most ``num_threads`` BLAS/OpenMP threads in numpy, scipy and scikit-learn (None:
    unchanged). The settings and torch's global CPU generator state are restored on exit.

    A fixed thread count makes CPU results reproducible (reductions are split by thread), and one
    thread avoids the large slowdowns of oversubscribed cores on small problems.
    """
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    was_warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    threads = torch.get_num_threads()
    # warn_only: on CUDA some kernels have no deterministic variant; they warn instead of failing
    torch.use_deterministic_algorithms(True, warn_only=True)
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    try:
        with torch.random.fork_rng(devices=[]), threadpool_limits(limits=num_threads):
            yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(was_deterministic, warn_only=was_warn_only)
