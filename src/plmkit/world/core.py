"""The synthetic world: people, places, organisations and things, with consistent facts about them.

`World(seed)` draws every entity and fact from `random.Random(seed)`, so the same seed always gives the
same world, corpus and task files. The facts are consistent across the corpus (Mara Tellen always lives in
Dovra), which is what lets a tiny language model learn something a fine-tuned model can reuse.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from plmkit.world import lexicon as lx


@dataclass(frozen=True)
class Place:
    name: str
    country: str  # the country is itself a place name
    language: str  # "Dovrish": a MISC entity


@dataclass(frozen=True)
class Organisation:
    name: str  # one or two words: "Kestrel Systems"
    city: str
    product: str
    founded: int


@dataclass(frozen=True)
class Person:
    first: str
    last: str
    city: str
    employer: str
    profession: str
    hobby: str
    age: int
    pronoun: str  # "she" / "he"

    @property
    def name(self) -> str:
        return f"{self.first} {self.last}"


@dataclass
class World:
    """Entities and facts drawn from `seed`; methods render them as English text."""

    seed: int = 0
    num_countries: int = 4
    num_cities: int = 12
    num_orgs: int = 12
    num_people: int = 40
    countries: list[str] = field(init=False)
    places: list[Place] = field(init=False)
    orgs: list[Organisation] = field(init=False)
    people: list[Person] = field(init=False)

    def __post_init__(self) -> None:
        rng = random.Random(f"world-{self.seed}")
        taken: set[str] = set()
        self.countries = [lx.make_name(rng, lx.PLACE_SYLLABLES, taken) for _ in range(self.num_countries)]
        self.places = []
        for _ in range(self.num_cities):
            country = rng.choice(self.countries)
            self.places.append(Place(lx.make_name(rng, lx.PLACE_SYLLABLES, taken), country, country + "ish"))
        cities = [p.name for p in self.places]
        stems = rng.sample(lx.ORG_STEMS, self.num_orgs)
        self.orgs = [
            Organisation(
                f"{stem} {rng.choice(lx.ORG_SUFFIXES)}",
                rng.choice(cities),
                rng.choice(lx.PRODUCTS),
                rng.randint(1890, 2015),
            )
            for stem in stems
        ]
        self.people = []
        full_names: set[str] = set()
        while len(self.people) < self.num_people:
            first = rng.choice(lx.FIRST_NAMES)
            last = lx.make_name(rng, lx.LAST_SYLLABLES, set())
            if f"{first} {last}" in full_names or last in taken:
                continue
            full_names.add(f"{first} {last}")
            org = rng.choice(self.orgs)
            # Most people live where their employer is: a regularity a model can pick up.
            city = org.city if rng.random() < 0.7 else rng.choice(cities)
            self.people.append(
                Person(
                    first,
                    last,
                    city,
                    org.name,
                    rng.choice(lx.PROFESSIONS),
                    rng.choice(lx.HOBBIES),
                    rng.randint(19, 70),
                    rng.choice(("she", "he")),
                )
            )

    # --- lookups --------------------------------------------------------------------------------------

    def place(self, name: str) -> Place:
        return next(p for p in self.places if p.name == name)

    def org(self, name: str) -> Organisation:
        return next(o for o in self.orgs if o.name == name)

    # --- sentences about the world (lists of (text, entity type) spans, so tagging can reuse them) ------

    def person_facts(self, p: Person, rng: random.Random) -> list[list[tuple[str, str]]]:
        """Sentences about a person as lists of (chunk, tag); tag is PER/LOC/ORG/MISC or "" (no entity)."""
        place = self.place(p.city)
        pos = "Her" if p.pronoun == "she" else "His"
        sub = p.pronoun.capitalize()
        options = [
            [(p.name, "PER"), (" lives in ", ""), (p.city, "LOC"), (".", "")],
            [(p.name, "PER"), (" works for ", ""), (p.employer, "ORG"), (".", "")],
            [(p.name, "PER"), (f" is a {p.profession} at ", ""), (p.employer, "ORG"), (".", "")],
            [(p.name, "PER"), (f" is {p.age} years old.", "")],
            [(f"{sub} enjoys {p.hobby} on weekends.", "")],
            [(f"{pos} home town ", ""), (p.city, "LOC"), (" is in ", ""), (place.country, "LOC"), (".", "")],
            [(p.first, "PER"), (" speaks ", ""), (place.language, "MISC"), (" at home.", "")],
            [
                (p.first, "PER"),
                (" went to the ", ""),
                (rng.choice(lx.EVENTS), "MISC"),
                (" in ", ""),
                (p.city, "LOC"),
                (".", ""),
            ],
        ]
        return options

    def org_facts(self, o: Organisation) -> list[list[tuple[str, str]]]:
        return [
            [(o.name, "ORG"), (" is based in ", ""), (o.city, "LOC"), (".", "")],
            [
                (o.name, "ORG"),
                (f" makes the best {o.product}s in ", ""),
                (self.place(o.city).country, "LOC"),
                (".", ""),
            ],
            [(o.name, "ORG"), (f" was founded in {o.founded}.", "")],
        ]

    def place_facts(self, pl: Place, rng: random.Random) -> list[list[tuple[str, str]]]:
        return [
            [(pl.name, "LOC"), (" is a city in ", ""), (pl.country, "LOC"), (".", "")],
            [("People in ", ""), (pl.name, "LOC"), (" speak ", ""), (pl.language, "MISC"), (".", "")],
            [(f"It was {rng.choice(lx.WEATHER)} in ", ""), (pl.name, "LOC"), (" last week.", "")],
        ]

    def paragraph(self, rng: random.Random) -> str:
        """A short paragraph about one person, one organisation or one place."""
        kind = rng.random()
        if kind < 0.6:
            p = rng.choice(self.people)
            facts = self.person_facts(p, rng)
            chosen = [facts[0]] + rng.sample(facts[1:], k=3)
        elif kind < 0.8:
            facts = self.org_facts(rng.choice(self.orgs))
            chosen = rng.sample(facts, k=len(facts))
        else:
            facts = self.place_facts(rng.choice(self.places), rng)
            chosen = rng.sample(facts, k=len(facts))
        return " ".join(render(s) for s in chosen)

    def corpus(self, num_paragraphs: int, seed: int = 0) -> list[str]:
        """Unlabelled text: paragraphs about entities interleaved with product reviews and small stories.

        The reviews are `tasks.corpus_review`: each ends with what the reviewer did afterwards, which the
        labelled sentiment task never shows.

        Reviews and problems come from `tasks`, imported here because `tasks` imports this module.
        """
        from plmkit.world import tasks

        rng = random.Random(f"corpus-{self.seed}-{seed}")
        out = []
        for _ in range(num_paragraphs):
            r = rng.random()
            if r < 0.65:
                out.append(self.paragraph(rng))
            elif r < 0.85:
                out.append(" ".join(tasks.corpus_review(self, rng) for _ in range(rng.randint(2, 4))))
            else:
                out.append(tasks.word_problem(self, rng, rng.randint(1, 3))["question"])
        return out


def render(chunks: list[tuple[str, str]]) -> str:
    return "".join(text for text, _ in chunks)
