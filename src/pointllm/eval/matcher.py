"""Judge-free close-set classification: find a class name (or a synonym) in a model's answer.

`match_label` is deterministic: the answer and every name are normalized the same way (lowercase,
punctuation to spaces, a simple plural rule), names are found as whole-word phrases, the longest
match wins ("tv stand" beats "stand", "bedside table" beats "table") and the earliest position
breaks ties. It gives an accuracy without any LLM; it undercounts answers that describe an object
without naming it, so it is reported beside the judge, not instead of it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

_NON_WORD = re.compile(r"[^a-z0-9]+")

# Extra names per ModelNet40 class (the class name itself always counts). A phrase belongs to one
# class only (tested); words that often describe something else ("light" in "light blue",
# "glass" in "glass table") are left out on purpose.
MODELNET40_SYNONYMS: dict[str, list[str]] = {
    "airplane": ["plane", "aeroplane", "aircraft", "airliner", "jet", "jetliner", "fighter jet"],
    "bathtub": ["bath", "bath tub", "tub", "jacuzzi"],
    "bed": ["bunk bed", "double bed", "bedstead", "cot"],
    "bench": ["park bench", "pew"],
    "bookshelf": ["bookcase", "book shelf", "bookshelves", "shelf", "shelves", "shelving"],
    "bottle": ["flask", "wine bottle", "water bottle"],
    "bowl": ["salad bowl", "soup bowl"],
    "car": ["automobile", "vehicle", "sedan", "truck", "suv", "van", "jeep", "taxi", "race car"],
    "chair": ["armchair", "office chair", "rocking chair", "recliner"],
    "cone": ["traffic cone", "pylon"],
    "cup": ["mug", "teacup", "coffee cup", "tumbler"],
    "curtain": ["drape", "drapes", "blind", "blinds", "curtains"],
    "desk": ["writing desk", "office desk", "computer desk"],
    "door": ["doorway", "gate"],
    "dresser": ["chest of drawers", "drawer", "bureau"],
    "flower pot": ["flowerpot", "planter", "plant pot", "pot"],
    "glass box": ["glass case", "display case", "aquarium", "fish tank", "terrarium", "vitrine"],
    "guitar": ["ukulele", "banjo"],
    "keyboard": ["computer keyboard", "keypad"],
    "lamp": ["lantern", "chandelier", "lampshade", "lamppost", "street light", "streetlight"],
    "laptop": ["notebook computer", "notebook", "macbook"],
    "mantel": ["mantelpiece", "mantle", "fireplace", "chimney piece"],
    "monitor": ["screen", "display", "television", "tv", "computer screen"],
    "night stand": ["nightstand", "bedside table", "night table", "bedside cabinet"],
    "person": [
        "human",
        "man",
        "men",
        "woman",
        "women",
        "boy",
        "girl",
        "child",
        "people",
        "figurine",
        "mannequin",
        "humanoid",
    ],
    "piano": ["grand piano", "upright piano"],
    "plant": ["tree", "flower", "bush", "shrub", "houseplant", "potted plant", "cactus", "fern"],
    "radio": ["transistor radio", "stereo", "boombox", "receiver"],
    "range hood": ["cooker hood", "extractor hood", "exhaust hood", "kitchen hood", "hood"],
    "sink": ["washbasin", "wash basin", "basin"],
    "sofa": ["couch", "settee", "loveseat", "love seat", "divan"],
    "stairs": ["staircase", "stairway", "stair", "steps"],
    "stool": ["bar stool", "barstool", "footstool", "step stool"],
    "table": ["dining table", "coffee table", "side table", "tabletop"],
    "tent": ["teepee", "tipi", "wigwam"],
    "toilet": ["toilet bowl", "urinal", "lavatory", "water closet"],
    "tv stand": ["tv cabinet", "tv table", "television stand", "entertainment center", "tv unit"],
    "vase": ["urn", "amphora"],
    "wardrobe": ["closet", "armoire", "cupboard"],
    "xbox": ["game console", "gaming console", "console", "playstation"],
}


def _singular(token: str) -> str:
    """A deliberately simple plural rule, applied to answers and names alike."""
    if len(token) > 4 and token.endswith("ies"):
        return token[:-3] + "y"
    if len(token) > 4 and token.endswith(("ches", "shes", "sses", "xes", "zes")):
        return token[:-2]
    if len(token) > 3 and token.endswith("s") and not token.endswith(("ss", "us", "is")):
        return token[:-1]
    return token


def normalize(text: str) -> list[str]:
    """Lowercase word tokens with punctuation removed and plurals reduced: "Two Chairs." ->
    ["two", "chair"]."""
    return [_singular(t) for t in _NON_WORD.sub(" ", text.lower()).split()]


def _phrases(
    class_names: Sequence[str], synonyms: Mapping[str, Iterable[str]] | None
) -> list[tuple[tuple[str, ...], int]]:
    """(normalized phrase, class index) for every class name and synonym."""
    phrases = []
    for index, name in enumerate(class_names):
        for phrase in (name, *((synonyms or {}).get(name, ()))):
            tokens = tuple(normalize(phrase))
            if tokens:
                phrases.append((tokens, index))
    return phrases


def match_label(
    answer: str,
    class_names: Sequence[str],
    synonyms: Mapping[str, Iterable[str]] | None = None,
) -> int | None:
    """Index of the class an answer names, or None when it names none.

    Class names and their synonyms are searched as whole-word phrases in the normalized answer;
    the longest phrase (in words, then characters) wins, then the earliest position.
    """
    words = normalize(answer)
    best: tuple[int, int, int] | None = None  # (-words, -chars, position) of the best match
    best_index = None
    for tokens, index in _phrases(class_names, synonyms):
        n = len(tokens)
        for pos in range(len(words) - n + 1):
            if tuple(words[pos : pos + n]) == tokens:
                key = (-n, -sum(map(len, tokens)), pos)
                if best is None or key < best:
                    best, best_index = key, index
                break  # later occurrences of the same phrase only lose the position tiebreak
    return best_index


@dataclass(frozen=True)
class ClassSet:
    """A close-set benchmark's classes (label index = position) and their synonyms."""

    name: str
    classes: tuple[str, ...]
    synonyms: Mapping[str, Sequence[str]]


def modelnet40_class_set() -> ClassSet:
    from pointllm.data.modelnet import MODELNET40_CLASSES

    return ClassSet("modelnet40", tuple(MODELNET40_CLASSES), MODELNET40_SYNONYMS)


def synthetic_class_set() -> ClassSet:
    from pointllm.data.synthetic import CATEGORIES, CATEGORY_SYNONYMS

    return ClassSet("synthetic", tuple(CATEGORIES), CATEGORY_SYNONYMS)


def known_class_sets() -> list[ClassSet]:
    return [modelnet40_class_set(), synthetic_class_set()]


def class_set_named(name: str) -> ClassSet:
    for class_set in known_class_sets():
        if class_set.name == name:
            return class_set
    names = ", ".join(c.name for c in known_class_sets())
    raise ValueError(f"unknown class set {name!r}; use one of {names}")


def class_set_for(labels: Iterable[tuple[int, str]], source: str) -> ClassSet:
    """The known class set in which every (label index, label name) pair sits at its index.

    `source` names the file in the error raised when no class set fits.
    """
    pairs = set(labels)
    class_sets = known_class_sets()

    def fits(class_set: ClassSet, pair: tuple[int, str]) -> bool:
        return 0 <= pair[0] < len(class_set.classes) and class_set.classes[pair[0]] == pair[1]

    for class_set in class_sets:
        if all(fits(class_set, pair) for pair in pairs):
            return class_set
    strays = sorted(p for p in pairs if not any(fits(c, p) for c in class_sets))
    label, name = strays[0] if strays else min(pairs)  # else: pairs from both sets mixed
    raise ValueError(
        f"{source}: labels do not match the ModelNet40 or synthetic class lists "
        f"(e.g. label {label} named {name!r})"
    )


def matcher_scores(results: Sequence[Mapping], class_set: ClassSet) -> dict:
    """Matcher accuracy over close-set results ({ground_truth: int, model_output, ...}).

    Returns accuracy (x100), correct/total/unmatched counts, per-class accuracy (x100, by class
    name, classes present in the results only) and per-item predictions (class index or None).
    """
    items, per_class = [], {}
    for result in results:
        predicted = match_label(result["model_output"], class_set.classes, class_set.synonyms)
        truth = int(result["ground_truth"])
        correct = predicted == truth
        items.append({"object_id": result["object_id"], "predicted": predicted, "correct": correct})
        hits = per_class.setdefault(class_set.classes[truth], [0, 0])
        hits[0] += correct
        hits[1] += 1
    total = len(items)
    correct_total = sum(item["correct"] for item in items)
    return {
        "class_set": class_set.name,
        "accuracy": 100.0 * correct_total / total if total else 0.0,
        "correct_predictions": correct_total,
        "total_predictions": total,
        "unmatched": sum(item["predicted"] is None for item in items),
        "per_class_accuracy": {
            name: 100.0 * per_class[name][0] / per_class[name][1]
            for name in class_set.classes
            if name in per_class
        },
        "results": items,
    }
