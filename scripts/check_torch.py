"""Fail loudly when the installed torch is not the build the lock file asked for."""

from __future__ import annotations

import argparse
import sys


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--version", required=True, help="expected version, e.g. 2.13.0")
    parser.add_argument("--build", choices=("cpu", "cuda"), required=True)
    args = parser.parse_args()
    try:
        import torch
    except ImportError:
        print("check-torch: torch is not installed in this environment", file=sys.stderr)
        return 1
    base = torch.__version__.split("+")[0]
    is_cuda = torch.version.cuda is not None
    problems = []
    if base != args.version:
        problems.append(f"torch {torch.__version__} is installed but the lock pins {args.version}")
    if args.build == "cpu" and is_cuda:
        problems.append(
            f"torch {torch.__version__} is a CUDA {torch.version.cuda} build; a CPU build was asked for"
        )
    if args.build == "cuda" and not is_cuda:
        problems.append(
            f"torch {torch.__version__} is a CPU build; a CUDA build was asked for (TORCH_BUILD=cuda)"
        )
    if problems:
        for problem in problems:
            print(f"check-torch: {problem}", file=sys.stderr)
        return 1
    print(
        f"torch {torch.__version__} ({'CUDA ' + torch.version.cuda if is_cuda else 'CPU'} build): ok"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
