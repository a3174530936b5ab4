"""A seeded synthetic world: English-like text about people, places, organisations and things, and tasks.

    from plmkit.world import World, make_task
    world = World(seed=0)
    train = make_task(world, "sentiment", "train")     # [{"sentence": ..., "label": 1}, ...]
    text = world.corpus(2000)                          # unlabelled paragraphs for pretraining

Everything is drawn from `random.Random` seeded by strings built from the seed, so a seed always gives the
same world on every machine and Python version. See docs/tour.md for the tasks and their split sizes.
"""

from __future__ import annotations

from plmkit.world.core import Organisation, Person, Place, World
from plmkit.world.io import write_world
from plmkit.world.tasks import GENERATORS, SPLIT_SIZES, SPLITS, TAGS, judge, make_task, prefer

__all__ = [
    "World",
    "Person",
    "Place",
    "Organisation",
    "make_task",
    "write_world",
    "judge",
    "prefer",
    "GENERATORS",
    "SPLIT_SIZES",
    "SPLITS",
    "TAGS",
]
