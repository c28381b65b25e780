"""Three generated text-classification tasks of clearly different difficulty, for demos and smoke tests:
no files, no network, deterministic by seed, made of real English words so that a pretrained sentence
encoder (MiniLM-L6) learns them in minutes on a CPU.

- `sentiment` (easy): every adjective in the sentence has the label's polarity; a word list solves it.
- `topic` (medium): four topics; sentences may mention a distractor word from another topic.
- `negation` (hard): "not" flips the adjective after it ("The food was not bad" is positive), mixed with
  plain sentences, so no bag of words solves it; the model must read the composition.

Sentences come from templates whose slots are filled from small word lists; `{good}` is an adjective of
the label's polarity, `{bad}` one of the opposite polarity. Dev is drawn from another seed than train and
never repeats a train sentence.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from pathlib import Path

from .base import Example, Task
from .kinds import KINDS
from .readers import described

POSITIVE = (
    "wonderful", "superb", "excellent", "delightful", "brilliant", "fantastic", "great", "good",
    "lovely", "charming", "enjoyable", "amazing", "outstanding", "pleasant", "terrific", "marvelous",
    "beautiful", "impressive", "splendid", "perfect", "remarkable", "satisfying", "fun", "nice",
)  # fmt: skip
NEGATIVE = (
    "terrible", "awful", "dreadful", "boring", "bad", "poor", "horrible", "dull", "disappointing",
    "mediocre", "weak", "painful", "annoying", "clumsy", "bland", "tedious", "messy", "ugly", "lousy",
    "unpleasant", "frustrating", "forgettable", "sloppy", "miserable",
)  # fmt: skip
NOUNS = (
    "movie", "film", "food", "service", "hotel", "book", "concert", "show", "meal", "staff", "album",
    "game", "room", "plot", "restaurant", "play", "trip", "story", "coffee", "soundtrack", "museum",
    "lecture",
)  # fmt: skip
ASPECTS = (
    "acting", "music", "ending", "price", "view", "atmosphere", "dialogue", "design", "pacing",
    "lighting", "writing", "decor", "menu", "cast", "opening", "finale", "staging", "performance",
    "scenery", "welcome",
)  # fmt: skip
TOPICS = {
    "sports": (
        "football", "basketball", "tennis", "goalkeeper", "stadium", "referee", "tournament", "coach",
        "marathon", "athlete", "league", "championship", "soccer team", "swimmer", "cyclist", "trophy",
        "playoffs", "penalty kick", "home run", "world cup", "sprinter", "boxing match",
    ),
    "food": (
        "pasta", "bread", "soup", "chocolate", "salad", "recipe", "cheese", "pizza", "chef", "dessert",
        "noodles", "spices", "breakfast", "vegetables", "bakery", "sandwich", "curry", "oven", "sushi",
        "pancakes", "garlic", "tomato sauce",
    ),
    "weather": (
        "rain", "snow", "storm", "forecast", "sunshine", "thunder", "wind", "clouds", "temperature",
        "fog", "hurricane", "drizzle", "humidity", "heatwave", "frost", "blizzard", "rainbow", "hail",
        "breeze", "tornado", "cold front", "flood warning",
    ),
    "technology": (
        "computer", "smartphone", "software", "internet", "laptop", "robot", "processor", "algorithm",
        "app", "keyboard", "database", "website", "microchip", "battery", "browser", "network", "server",
        "printer", "satellite", "operating system", "cloud storage", "video card",
    ),
}  # fmt: skip

SENTIMENT_TEMPLATES = (
    "The {noun} was {good} and the {aspect} was {good}.",
    "Really {good} {noun}, and the {aspect} was {good} too.",
    "I found the {noun} {good}.",
    "Honestly, the {noun} felt {good} from start to finish.",
    "Our {noun} was {good}; the {aspect} was {good} as well.",
    "Both the {noun} and its {aspect} were {good}.",
    "The {aspect} made the {noun} {good}.",
    "Everyone agreed the {noun} was {good}.",
)
TOPIC_TEMPLATES = (
    "The article was all about the {topic} and the {topic}.",
    "We spent the whole evening talking about the {topic}.",
    "My neighbour sent me a long message about the {topic}.",
    "I read a short report on the {topic} this morning.",
    "The news mentioned the {other} briefly, but mostly the {topic} and the {topic}.",
    "Everyone at the office was discussing the {topic} and the {topic}, not the {other}.",
    "Her podcast this week covers the {topic}.",
    "After lunch we argued about the {topic} and the {topic} for an hour.",
)
NEGATION_TEMPLATES = (
    # plain: the adjective carries the label
    "The {noun} was {good}.",
    "I thought the {noun} was {good}.",
    "The {aspect} of the {noun} was {good}.",
    # negated: "not" flips an adjective of the opposite polarity
    "The {noun} was not {bad}.",
    "I did not think the {noun} was {bad}.",
    "The {aspect} of the {noun} was not {bad} at all.",
    "Honestly, the {noun} was not {bad}.",
    # contrast: both adjectives appear, the negated one is the wrong one
    "The {noun} was {good}, not {bad}.",
)

_SLOT = re.compile(r"\{(\w+)\}")
Words = dict[str, Sequence[str]]


def _sentiment_words(label: int) -> Words:
    polar = (NEGATIVE, POSITIVE)
    return {"good": polar[label], "bad": polar[1 - label], "noun": NOUNS, "aspect": ASPECTS}


def _topic_words(label: int) -> Words:
    names = list(TOPICS)
    others = tuple(w for name in names if name != names[label] for w in TOPICS[name])
    return {"topic": TOPICS[names[label]], "other": others}


def _fill(rng: random.Random, template: str, words: Words) -> str:
    """Fill each {slot} with a word from its list; a slot used twice gets two different words."""
    used: set[str] = set()

    def pick(match: re.Match[str]) -> str:
        choices = [w for w in words[match.group(1)] if w not in used] or list(words[match.group(1)])
        word = rng.choice(choices)
        used.add(word)
        return word

    return _SLOT.sub(pick, template)


def _generate(
    name: str,
    templates: Sequence[str],
    words: Callable[[int], Words],
    n_labels: int,
    n: int,
    seed: str,
    exclude: frozenset[str] = frozenset(),
) -> list[Example]:
    """`n` distinct sentences (none in `exclude`) with labels exactly balanced (cycled, then shuffled)."""
    rng = random.Random(seed)
    seen = set(exclude)
    examples = []
    label_words = [words(label) for label in range(n_labels)]
    for i in range(n):
        label = i % n_labels
        for _ in range(1000):
            text = _fill(rng, rng.choice(templates), label_words[label])
            if text not in seen:
                break
        else:
            raise ValueError(
                f"synthetic task {name!r}: cannot draw {n} distinct sentences (ran out after {i}); "
                "ask for fewer examples"
            )
        seen.add(text)
        examples.append(Example(text, None, label))
    rng.shuffle(examples)
    return examples


def _subjects(n: int, seed: str, exclude: frozenset[str] = frozenset()) -> list[Example]:
    """`n` distinct review sentences, each labelled with the noun it is about (a generation target); the
    nouns cycled, so each is as frequent as the others, then shuffled."""
    rng = random.Random(seed)
    seen, examples = set(exclude), []
    for i in range(n):
        noun = NOUNS[i % len(NOUNS)]
        for _ in range(1000):
            template = rng.choice(SENTIMENT_TEMPLATES).replace("{noun}", noun)
            text = _fill(rng, template, _sentiment_words(rng.randrange(2)))
            if text not in seen:
                break
        else:
            raise ValueError(f"synthetic task 'subject': cannot draw {n} distinct sentences; ask for fewer")
        seen.add(text)
        examples.append(Example(text, None, noun))
    rng.shuffle(examples)
    return examples


Draw = Callable[[int, str, frozenset[str]], list[Example]]  # (n, seed, texts to avoid) -> examples


def _task(name: str, draw: Draw, n_train: int, n_dev: int, seed: int, **task: object) -> Task:
    """A Task whose reader generates its splits (once, on first use) by `draw`; data_dir is ignored, so
    it also serves as the hub reader and `task.load("train")` works without a folder."""
    cache: dict[str, list[Example]] = {}

    def reader(data_dir: Path, split: str, strict: bool) -> tuple[list[Example], int]:
        if split not in ("train", "dev"):
            raise ValueError(f"split must be 'train' or 'dev', got {split!r}")
        if not cache:
            base = f"rankmix-synthetic/{name}/{seed}"
            cache["train"] = draw(n_train, f"{base}/train", frozenset())
            cache["dev"] = draw(n_dev, f"{base}/dev", frozenset(e.text_a for e in cache["train"]))
        return list(cache[split]), 0

    reader = described(reader, "generated by rankmix")
    return Task(name=name, reader=reader, hub=reader, **task)  # type: ignore[arg-type]


def _classification(
    name: str,
    labels: tuple[str, ...],
    template: str,
    sentences: Sequence[str],
    words: Callable[[int], Words],
    **sizes: int,
) -> Task:
    def draw(n: int, seed: str, exclude: frozenset[str]) -> list[Example]:
        return _generate(name, sentences, words, len(labels), n, seed, exclude)

    return _task(
        name, draw, labels=labels, label_words=labels, metrics=("accuracy",), template=template, **sizes
    )


def subject_task(n_train: int = 400, n_dev: int = 200, seed: int = 0) -> Task:
    """A generation demo task: name the thing a review sentence is about (its noun, copied out)."""
    return _task(
        "subject",
        _subjects,
        n_train,
        n_dev,
        seed,
        labels=(),
        label_words=(),
        metrics=("exact_match",),
        template="Sentence: {text_a}\nQuestion: What is the sentence about?\nAnswer:",
        kind=KINDS["generation"],
    )


def synthetic_tasks(n_train: int = 400, n_dev: int = 200, seed: int = 0) -> list[Task]:
    """The three demo tasks, easy to hard: sentiment, topic, negation; `n_train`/`n_dev` examples each."""
    if n_train < 1 or n_dev < 1:
        raise ValueError(f"n_train and n_dev must be positive, got n_train={n_train}, n_dev={n_dev}")
    polarity = ("negative", "positive")
    review = "Review: {text_a}\nSentiment:"
    sizes = {"n_train": n_train, "n_dev": n_dev, "seed": seed}
    return [
        _classification("sentiment", polarity, review, SENTIMENT_TEMPLATES, _sentiment_words, **sizes),
        _classification(
            "topic", tuple(TOPICS), "Sentence: {text_a}\nTopic:", TOPIC_TEMPLATES, _topic_words, **sizes
        ),
        _classification("negation", polarity, review, NEGATION_TEMPLATES, _sentiment_words, **sizes),
    ]
