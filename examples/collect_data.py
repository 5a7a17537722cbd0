"""Collect RGB-D trajectories with revisits from the ground-truth simulator.

The default run (20 training scenes x 10 episodes of up to 500 frames at 64x64, all cores)::

    .venv/bin/python examples/collect_data.py --output-dir data/train-64

A tiny run (what the tests use)::

    .venv/bin/python examples/collect_data.py --output-dir /tmp/tiny --scene-count 2 \
        --episodes-per-scene 3 --episodes-per-shard 1 --max-steps 20 --width 32 --height 32 \
        --workers 1

Rerunning the same command resumes an interrupted run. To spread the scenes over ``n`` machines,
run the same command on machine ``k`` with ``--scene-start $((k * c)) --scene-count c``, into one
shared folder or into separate folders whose ``shards/`` and ``plans/`` are copied together
afterwards. Weight the policies with e.g. ``--waypoint 1 --out-and-back 2 --look-around 0``.
Inspect the result with ``examples/inspect_data.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import tyro

from envs.collection import CollectionConfig, collect
from worldsim import cli


@dataclass(frozen=True)
class Args:
    """Command-line arguments: the collection settings, flags without prefixes."""

    collection: Annotated[CollectionConfig, tyro.conf.OmitArgPrefixes]
    quiet: bool = False
    """Hide the progress bar."""


def main(args: Args) -> None:
    # Every episode seeds itself from (seed, scene, episode), so there is nothing to seed here;
    # the device is the simulator's own (EGL on the CPU or GPU the driver offers).
    summary = collect(args.collection, progress=not args.quiet)
    print(summary.format())


if __name__ == "__main__":
    cli.run(main, Args)
