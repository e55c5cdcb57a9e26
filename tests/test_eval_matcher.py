"""The judge-free class matcher: normalization, longest/earliest rule, synonym tables."""

from __future__ import annotations

import random
import re

import pytest

from pointllm.eval.matcher import (
    MODELNET40_SYNONYMS,
    ClassSet,
    class_set_for,
    match_label,
    matcher_scores,
    normalize,
    synthetic_class_set,
)

CLASSES = ["chair", "table", "tv stand", "monitor", "flower pot", "plant", "car", "glass box"]
SYNONYMS = {
    "chair": ["armchair"],
    "monitor": ["tv", "screen"],
    "flower pot": ["pot", "planter"],
    "car": ["truck"],
}


def naive_match(answer: str, classes, synonyms) -> int | None:
    """Reference: regex search of every phrase in the normalized answer string."""
    text = " " + " ".join(normalize(answer)) + " "
    found = []
    for index, name in enumerate(classes):
        for phrase in (name, *synonyms.get(name, ())):
            tokens = normalize(phrase)
            hit = re.search(" " + re.escape(" ".join(tokens)) + " ", text)
            if hit:
                found.append((-len(tokens), -len("".join(tokens)), hit.start(), index))
    return min(found)[3] if found else None


def test_normalize_lowercases_strips_punctuation_and_plurals():
    assert normalize("Two Chairs, a BOX-like Table!") == [
        "two",
        "chair",
        "a",
        "box",
        "like",
        "table",
    ]
    assert normalize("boxes benches batteries glass bus") == [
        "box",
        "bench",
        "battery",
        "glass",
        "bus",
    ]


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("This is a 3D model of a wooden chair.", "chair"),
        ("A black TV stand with drawers", "tv stand"),  # longest beats "tv"
        ("an old tv", "monitor"),  # synonym
        ("Two armchairs.", "chair"),  # plural synonym
        ("a chair next to a table", "chair"),  # earliest wins a tie
        ("a table next to a chair", "table"),
        ("a plant in a flower pot", "flower pot"),  # two words beat one, wherever they are
        ("Trucks!", "car"),
    ],
)
def test_match_label_rules(answer, expected):
    assert CLASSES[match_label(answer, CLASSES, SYNONYMS)] == expected


@pytest.mark.parametrize("answer", ["I cannot tell what it is.", "a potato on a carpet", "", "..."])
def test_match_label_none_without_a_whole_word_match(answer):
    assert match_label(answer, CLASSES, SYNONYMS) is None


def test_match_label_agrees_with_a_naive_regex_reference():
    rng = random.Random(0)
    vocabulary = [p for name in CLASSES for p in (name, *SYNONYMS.get(name, ()))]
    vocabulary += ["a", "red", "of", "the", "standing", "potted", "glass", "Chairs", "tvs"]
    for _ in range(500):
        answer = " ".join(rng.choice(vocabulary) for _ in range(rng.randint(0, 8)))
        assert match_label(answer, CLASSES, SYNONYMS) == naive_match(answer, CLASSES, SYNONYMS)


def _phrase_owners(class_set: ClassSet) -> dict[tuple[str, ...], set[str]]:
    owners: dict[tuple[str, ...], set[str]] = {}
    for name in class_set.classes:
        for phrase in (name, *class_set.synonyms.get(name, ())):
            owners.setdefault(tuple(normalize(phrase)), set()).add(name)
    return owners


def test_modelnet40_synonyms_cover_the_classes_without_ambiguity():
    modelnet = pytest.importorskip("pointllm.data.modelnet")
    assert list(MODELNET40_SYNONYMS) == list(modelnet.MODELNET40_CLASSES)
    class_set = ClassSet("modelnet40", tuple(modelnet.MODELNET40_CLASSES), MODELNET40_SYNONYMS)
    ambiguous = {p: o for p, o in _phrase_owners(class_set).items() if len(o) > 1}
    assert ambiguous == {}
    assert (
        class_set.classes[
            match_label("It is an aeroplane.", class_set.classes, MODELNET40_SYNONYMS)
        ]
        == "airplane"
    )
    assert (
        class_set.classes[match_label("a bedside table", class_set.classes, MODELNET40_SYNONYMS)]
        == "night stand"
    )


def test_synthetic_class_set_is_unambiguous_and_detected_from_labels():
    class_set = synthetic_class_set()
    assert {p: o for p, o in _phrase_owners(class_set).items() if len(o) > 1} == {}
    pairs = [(i, name) for i, name in enumerate(class_set.classes)][:5]
    assert class_set_for(pairs, "split.json").name == "synthetic"
    with pytest.raises(
        ValueError, match=r"split\.json: labels do not match .* label 0 named 'spoon'"
    ):
        class_set_for([(0, "spoon")], "split.json")


def test_matcher_scores_counts_accuracy_per_class_and_unmatched():
    class_set = ClassSet("toy", tuple(CLASSES), SYNONYMS)
    results = [
        {"object_id": 0, "ground_truth": 0, "model_output": "an armchair"},  # right
        {"object_id": 1, "ground_truth": 0, "model_output": "a table"},  # wrong
        {"object_id": 2, "ground_truth": 6, "model_output": "a red truck"},  # right
        {"object_id": 3, "ground_truth": 6, "model_output": "no idea"},  # unmatched
    ]
    scores = matcher_scores(results, class_set)
    assert scores["accuracy"] == 50.0
    assert (scores["correct_predictions"], scores["total_predictions"], scores["unmatched"]) == (
        2,
        4,
        1,
    )
    assert scores["per_class_accuracy"] == {"chair": 50.0, "car": 50.0}
    assert [r["predicted"] for r in scores["results"]] == [0, 1, 6, None]
