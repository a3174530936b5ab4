"""Word lists of the synthetic world: invented but English-like names, plus ordinary English vocabulary.

Names are built from syllables so that a subword tokenizer has something to learn, and so that no real
person, place or company is described. Everything random is drawn from an explicit `random.Random`.
"""

from __future__ import annotations

import random

FIRST_NAMES = (
    "Mara",
    "Tomas",
    "Ilse",
    "Bran",
    "Odile",
    "Kiran",
    "Lena",
    "Ravi",
    "Sela",
    "Joran",
    "Nadia",
    "Piet",
    "Una",
    "Felix",
    "Greta",
    "Hugo",
    "Ines",
    "Milo",
    "Nora",
    "Oskar",
    "Priya",
    "Quinn",
    "Rosa",
    "Sven",
    "Talia",
    "Ugo",
    "Vera",
    "Wren",
    "Yara",
    "Zeno",
    "Anouk",
    "Bodil",
    "Cato",
    "Dara",
    "Emil",
    "Freya",
)
LAST_SYLLABLES = (
    ("Tel", "Mor", "Vas", "Hal", "Bren", "Kor", "Lind", "Ost", "Prav", "Quel", "Ruth", "Sand", "Tov", "Wick"),
    ("en", "ley", "ford", "ark", "ison", "ova", "berg", "wick", "ton", "ard", "ish", "ell"),
)
PLACE_SYLLABLES = (
    ("Dov", "Kal", "Ser", "Ambr", "Tal", "Var", "Mel", "Orn", "Bel", "Cair", "Fen", "Gor", "Hest", "Lor"),
    ("ra", "mont", "ick", "ova", "haven", "ia", "dale", "port", "mere", "stad", "by", "ton"),
)
ORG_SUFFIXES = (
    "Systems",
    "Bank",
    "Foods",
    "Labs",
    "Motors",
    "Press",
    "Works",
    "Group",
    "Airlines",
    "Textiles",
)
ORG_STEMS = (
    "Kestrel",
    "Bluefin",
    "Northgate",
    "Copperleaf",
    "Ironwood",
    "Silverline",
    "Redfern",
    "Stonebridge",
    "Greenhill",
    "Brightwater",
    "Oakmere",
    "Falcon",
    "Harbor",
    "Summit",
    "Willow",
    "Granite",
)
LANGUAGE_SUFFIX = "ish"  # a country "Dovra" speaks "Dovrish": a MISC entity
EVENTS = ("Harvest Festival", "Winter Fair", "Lantern Parade", "River Games", "Spring Market", "Book Week")
PROFESSIONS = (
    "baker",
    "teacher",
    "engineer",
    "doctor",
    "painter",
    "pilot",
    "farmer",
    "lawyer",
    "chemist",
    "tailor",
    "writer",
    "nurse",
    "carpenter",
    "musician",
)
PRODUCTS = (
    "kettle",
    "phone",
    "bicycle",
    "lamp",
    "jacket",
    "blender",
    "camera",
    "tent",
    "printer",
    "backpack",
    "heater",
    "watch",
    "toaster",
    "speaker",
    "umbrella",
    "chair",
)
HOBBIES = ("chess", "sailing", "gardening", "painting", "running", "baking", "fishing", "singing", "climbing")
WEATHER = ("rainy", "sunny", "windy", "cold", "warm", "foggy")

# Sentiment vocabulary. Negation flips polarity ("not bad" is positive). The lists are long on purpose:
# a few dozen labelled reviews show only a fraction of the words, so a classifier trained on them must
# generalize to words it never saw labelled, which is what pretraining on the unlabelled reviews (where a
# verdict reveals each word's polarity, see `corpus_review`) makes possible.
POSITIVE_WORDS = (
    "good", "great", "excellent", "reliable", "comfortable", "sturdy", "lovely", "fast", "quiet", "solid",
    "superb", "handy", "sleek", "elegant", "durable", "smooth", "bright", "clever", "perfect", "wonderful",
    "brilliant", "pleasant", "charming", "robust", "efficient", "practical", "stylish", "neat", "fantastic",
    "splendid", "delightful", "sharp", "compact", "gorgeous", "tidy", "precise", "cozy", "handsome", "nice",
    "useful",
)
NEGATIVE_WORDS = (
    "bad", "terrible", "awful", "flimsy", "noisy", "slow", "broken", "ugly", "cheap", "useless", "clumsy",
    "shoddy", "faulty", "dull", "awkward", "horrible", "dreadful", "poor", "weak", "leaky", "wobbly",
    "sticky", "greasy", "rusty", "dented", "scratched", "smelly", "lousy", "mediocre", "annoying", "fiddly",
    "bulky", "dim", "loose", "sloppy", "crude", "nasty", "rough", "stiff", "dirty",
)
# What a reviewer did, as (positive, negative) pairs of single words that fill the same slot right after
# the review's words ("it is sturdy, kept by Nina"), so the verdict is predictable only from those words
# and always at the same distance from them. Only the unlabelled corpus has these: they tell a pretrained
# model which words go with which verdict, and never give a labelled example's label.
VERDICTS = (
    ("loved", "hated"),
    ("praised", "criticized"),
    ("kept", "returned"),
    ("recommended", "regretted"),
    ("enjoyed", "disliked"),
)
INTENSIFIERS = ("very", "really", "quite", "rather")
# Complaint phrases with an intensity word: "too slow", "too loud".
TOO_WORDS = ("slow", "loud", "heavy", "small", "expensive", "fragile", "hot")

NUMBER_WORDS = (
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
)

ITEMS = ("apples", "books", "coins", "pencils", "stamps", "marbles", "cards", "shells", "eggs", "tickets")


def make_name(rng: random.Random, syllables: tuple[tuple[str, ...], tuple[str, ...]], taken: set[str]) -> str:
    """An unused two-syllable name: onset from the first list, ending from the second."""
    for _ in range(1000):
        name = rng.choice(syllables[0]) + rng.choice(syllables[1])
        if name not in taken:
            taken.add(name)
            return name
    raise RuntimeError("ran out of distinct names; the syllable lists are too small for this world size")
