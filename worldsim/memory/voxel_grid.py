"""A batched sparse grid whose cells keep the element-wise maximum of the features put in them.

Storage (all rows of the batch in one set of tensors, no Python loops over points)
    - ``keys`` (M,) int64, sorted: ``row << (BITS * A) | packed cell coordinates``, with ``A`` the
      number of axes (3 for voxels, 2 for a bird's-eye grid) and ``BITS = 16`` per axis; cell
      coordinates ``floor(x / cell_size)`` must lie in ``[-2^15, 2^15)`` (about ±3.3 km at 0.1 m
      cells) and rows in ``[0, 2^(63 - 16 A))``.
    - ``slots`` (M,) int64: the row of ``features`` / ``last_seen`` that holds each key's data.
      Features are append-only (capacity doubles when needed), so adding cells moves only the
      16-byte (key, slot) pairs, never the feature vectors.

Insertion
    ``torch.unique`` of the new keys, ``scatter_reduce(amax)`` of their features per key, a
    ``searchsorted`` into ``keys`` for the cells already present (max with the stored vector) and
    a merge of the new keys into the sorted index.

Bound and eviction policy
    A row holds at most ``max_cells`` cells. When an insertion makes a row exceed it, the row's
    cells observed longest ago (smallest ``last_seen``; ties: smaller key) are dropped until it
    holds ``max_cells``. Dropped slots are reclaimed when they make up half of the feature table.
"""

from __future__ import annotations

import torch
from torch import Tensor

BITS = 16
"""Bits per axis in a cell key."""
_HALF = 1 << (BITS - 1)


class SparseMaxGrid:
    """Sparse cells with max-pooled features, batched over independent rows.

    Args:
        axes: A, number of coordinates per cell (2 or 3).
        channels: C, feature width.
        max_cells: most cells per row, >= 1.
        batch_size: B, number of rows.
        device: where the tensors live.
        dtype: feature dtype.
    """

    def __init__(
        self,
        axes: int,
        channels: int,
        max_cells: int,
        batch_size: int,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if axes not in (2, 3):
            raise ValueError(f"axes must be 2 or 3, got {axes}")
        if max_cells < 1:
            raise ValueError(f"max_cells must be >= 1, got {max_cells}")
        if not 1 <= batch_size < (1 << (63 - BITS * axes)):
            raise ValueError(
                f"batch_size must be in [1, {1 << (63 - BITS * axes)}), got {batch_size}"
            )
        self.axes = axes
        self.channels = channels
        self.max_cells = max_cells
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.dtype = dtype
        self.row_shift = BITS * axes
        self.keys = torch.zeros(0, dtype=torch.long, device=self.device)
        self.slots = torch.zeros(0, dtype=torch.long, device=self.device)
        self.features = torch.zeros(0, channels, dtype=dtype, device=self.device)
        self.last_seen = torch.zeros(0, dtype=torch.long, device=self.device)
        self.used = 0  # rows of ``features`` handed out so far
        self.counts = torch.zeros(batch_size, dtype=torch.long, device=self.device)  # per row

    # Keys ---------------------------------------------------------------------------------

    def encode(self, rows: Tensor, cells: Tensor) -> Tensor:
        """Keys of (P,) rows and (P, A) integer cell coordinates.

        Raises:
            ValueError: if a coordinate is outside ``[-2^15, 2^15)``.
        """
        if cells.numel() and (int(cells.min()) < -_HALF or int(cells.max()) >= _HALF):
            raise ValueError(
                f"cell coordinates must lie in [{-_HALF}, {_HALF}) cells, got "
                f"[{int(cells.min())}, {int(cells.max())}]: points are too far from the world "
                "origin for this cell size (use larger cells or recentre the world)"
            )
        key = rows.long()
        for axis in range(self.axes):
            key = (key << BITS) | (cells[:, axis] + _HALF)
        return key

    def decode(self, keys: Tensor) -> tuple[Tensor, Tensor]:
        """Rows (P,) and integer cell coordinates (P, A) of keys."""
        mask = (1 << BITS) - 1
        cells = [((keys >> (BITS * (self.axes - 1 - a))) & mask) - _HALF for a in range(self.axes)]
        return keys >> self.row_shift, torch.stack(cells, dim=-1)

    # Queries ------------------------------------------------------------------------------

    def __len__(self) -> int:
        return int(self.keys.numel())

    def rows(self) -> Tensor:
        """(M,) row of each stored cell, in key order."""
        return self.keys >> self.row_shift

    def row_counts(self) -> Tensor:
        """(B,) number of cells per row (a copy)."""
        return self.counts.clone()

    def cell_features(self) -> Tensor:
        """(M, C) features of the stored cells, in key order (a copy)."""
        return self.features[self.slots]

    # Updates ------------------------------------------------------------------------------

    def insert(self, rows: Tensor, cells: Tensor, features: Tensor, time: Tensor) -> None:
        """Max-pool features into their cells.

        Args:
            rows: (P,) int64 row of each point, in ``[0, B)``.
            cells: (P, A) int64 cell coordinates.
            features: (P, C) features.
            time: (P,) int64 observation time of each point (for eviction).
        """
        if rows.numel() == 0:
            return
        point_keys = self.encode(rows, cells)
        unique, inverse = torch.unique(point_keys, return_inverse=True)  # sorted (U,)
        pooled = torch.full(
            (unique.numel(), self.channels), float("-inf"), dtype=self.dtype, device=self.device
        )
        pooled.scatter_reduce_(
            0, inverse[:, None].expand(-1, self.channels), features.to(self.dtype), "amax"
        )
        seen = torch.full_like(unique, torch.iinfo(torch.long).min)
        seen.scatter_reduce_(0, inverse, time.long(), "amax")

        position = torch.searchsorted(self.keys, unique)  # (U,)
        if self.keys.numel():
            probe = self.keys.index_select(0, position.clamp(max=self.keys.numel() - 1))
            found = (position < self.keys.numel()) & (probe == unique)
        else:
            found = torch.zeros_like(unique, dtype=torch.bool)
        old = found.nonzero()[:, 0]
        if old.numel():
            old_slots = self.slots.index_select(0, position.index_select(0, old))
            self.features.index_copy_(
                0,
                old_slots,
                torch.maximum(
                    self.features.index_select(0, old_slots), pooled.index_select(0, old)
                ),
            )
            self.last_seen.index_copy_(
                0,
                old_slots,
                torch.maximum(self.last_seen.index_select(0, old_slots), seen.index_select(0, old)),
            )
        new = (~found).nonzero()[:, 0]
        count = new.numel()
        if count:
            new_slots = self._allocate(count)
            self.features[self.used - count : self.used] = pooled.index_select(0, new)
            self.last_seen[self.used - count : self.used] = seen.index_select(0, new)
            new_keys = unique.index_select(0, new)
            self._merge(new_keys, new_slots, position.index_select(0, new))
            self.counts += torch.bincount(new_keys >> self.row_shift, minlength=self.batch_size)
            if int(self.counts.max()) > self.max_cells:
                self._evict()

    def _allocate(self, count: int) -> Tensor:
        needed = self.used + count
        if needed > self.features.shape[0]:
            capacity = max(needed, 2 * self.features.shape[0], 1024)
            features = torch.empty(capacity, self.channels, dtype=self.dtype, device=self.device)
            features[: self.used] = self.features[: self.used]
            last_seen = torch.empty(capacity, dtype=torch.long, device=self.device)
            last_seen[: self.used] = self.last_seen[: self.used]
            self.features, self.last_seen = features, last_seen
        slots = torch.arange(self.used, needed, device=self.device)
        self.used = needed
        return slots

    def _merge(self, new_keys: Tensor, new_slots: Tensor, position: Tensor) -> None:
        """Merge sorted ``new_keys`` (absent from ``keys``) into the sorted index."""
        old = self.keys.numel()
        # Old key j moves right by the number of new keys inserted at or before it.
        shift = torch.bincount(position, minlength=old + 1).cumsum(0)[:old]
        old_target = torch.arange(old, device=self.device) + shift
        new_target = position + torch.arange(new_keys.numel(), device=self.device)
        keys = torch.empty(old + new_keys.numel(), dtype=torch.long, device=self.device)
        slots = torch.empty_like(keys)
        keys[old_target], slots[old_target] = self.keys, self.slots
        keys[new_target], slots[new_target] = new_keys, new_slots
        self.keys, self.slots = keys, slots

    def _evict(self) -> None:
        counts = self.counts
        rows = self.rows()
        # Order: by row, then most recently seen first, then by key (the index is key-sorted,
        # and both sorts are stable).
        order = torch.sort(-self.last_seen[self.slots], stable=True).indices
        order = order[torch.sort(rows[order], stable=True).indices]
        starts = torch.cumsum(counts, 0) - counts
        rank = torch.arange(rows.numel(), device=self.device) - starts[rows[order]]
        keep = torch.empty_like(rows, dtype=torch.bool)
        keep[order] = rank < self.max_cells
        self.keys, self.slots = self.keys[keep], self.slots[keep]
        self.counts = counts.clamp(max=self.max_cells)  # each row kept min(count, max_cells)
        if 2 * self.keys.numel() < self.used:
            self._compact()

    def _compact(self) -> None:
        self.features = self.features[self.slots].clone()
        self.last_seen = self.last_seen[self.slots].clone()
        self.slots = torch.arange(self.keys.numel(), device=self.device)
        self.used = self.keys.numel()

    # Copies -------------------------------------------------------------------------------

    def select(self, index: Tensor) -> SparseMaxGrid:
        """A compact copy holding rows ``index`` (B',) of this grid, renumbered 0 … B'-1."""
        out = SparseMaxGrid(
            self.axes, self.channels, self.max_cells, index.numel(), self.device, self.dtype
        )
        counts = self.row_counts()
        starts = torch.cumsum(counts, 0) - counts
        take = counts[index]  # (B',)
        total = int(take.sum())
        new_rows = torch.repeat_interleave(torch.arange(index.numel(), device=self.device), take)
        offset = torch.arange(total, device=self.device) - (torch.cumsum(take, 0) - take)[new_rows]
        source = starts[index][new_rows] + offset  # (total,) positions in the old index
        cell_mask = (1 << self.row_shift) - 1
        out.keys = (new_rows << self.row_shift) | (self.keys[source] & cell_mask)
        out.slots = torch.arange(total, device=self.device)
        out.features = self.features[self.slots[source]].clone()
        out.last_seen = self.last_seen[self.slots[source]].clone()
        out.used = total
        out.counts = take.clone()
        return out
