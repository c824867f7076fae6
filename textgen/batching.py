"""The stateful batch layout: parallel streams cut into consecutive windows.

The ids are cut to a multiple of batch_size x seq_length (plus one for the shifted
targets) and reshaped to (batch_size, -1): row i is one contiguous stream. Batch k is
columns [k*seq_length, (k+1)*seq_length) of every row, so row i of batch k+1 continues
row i of batch k and the LSTM state carried between batches stays meaningful. Nothing
is shuffled; the remainder that does not fill a whole batch is dropped (for evaluation,
keep_partial keeps a shorter last window so that all but fewer than batch_size
characters are scored).
"""

from __future__ import annotations

import numpy as np


class StreamBatches:
    def __init__(self, ids: np.ndarray, batch_size: int, seq_length: int, keep_partial: bool = False):
        self.batch_size = batch_size
        self.seq_length = seq_length
        columns = max(0, (len(ids) - 1) // batch_size)
        if not keep_partial:
            columns -= columns % seq_length
        self.columns = columns
        self.num_batches = -(-columns // seq_length)
        usable = columns * batch_size
        # Views, not copies: a memory-mapped corpus stays on disk until a batch is read.
        self.inputs = ids[:usable].reshape(batch_size, -1)
        self.targets = ids[1:usable + 1].reshape(batch_size, -1)

    def __len__(self) -> int:
        return self.num_batches

    def __getitem__(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        if not 0 <= k < self.num_batches:
            raise IndexError(k)
        columns = slice(k * self.seq_length, min((k + 1) * self.seq_length, self.columns))
        return (np.asarray(self.inputs[:, columns], dtype=np.int32),
                np.asarray(self.targets[:, columns], dtype=np.int32))

    @staticmethod
    def min_length(batch_size: int, seq_length: int) -> int:
        """Characters needed for one whole batch (the +1 is the last target)."""
        return batch_size * seq_length + 1


def training_length(total: int, val_fraction: float, val_max_chars: int = 0) -> int:
    """Characters left for training when the contiguous last val_fraction of total, at most val_max_chars of it (0:
    no limit), is held out."""
    held = int(total * val_fraction)
    return total - (min(held, val_max_chars) if val_max_chars else held)


def split_validation(ids: np.ndarray, val_fraction: float, val_max_chars: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(training ids, validation ids): the contiguous last val_fraction of the corpus, at most val_max_chars of it,
    is held out."""
    cut = training_length(len(ids), val_fraction, val_max_chars)
    return ids[:cut], ids[cut:]


COUNTED_PER_PASS = 1 << 24  # ids counted at once (np.bincount widens them to 8 bytes each: 128 MB)


def only_in_validation(train_ids: np.ndarray, val_ids: np.ndarray, vocab_size: int) -> np.ndarray:
    """The ids that come in val_ids and nowhere in train_ids: characters the model never trains on."""
    return np.flatnonzero(_present(val_ids, vocab_size) & ~_present(train_ids, vocab_size))


def _present(ids: np.ndarray, vocab_size: int) -> np.ndarray:
    """Per id, whether ids holds it."""
    present = np.zeros(vocab_size, bool)
    for start in range(0, len(ids), COUNTED_PER_PASS):
        present |= np.bincount(ids[start:start + COUNTED_PER_PASS], minlength=vocab_size) > 0
    return present
