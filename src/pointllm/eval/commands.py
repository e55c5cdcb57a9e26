"""`pointllm eval ...`: run a benchmark, judge it with an LLM, score captions, report.

Each subcommand is one `_add_*` function that builds its parser and names its handler; the
handlers only parse and print, the work happens in pointllm.eval.{run,judge,metrics,report}.
"""

from __future__ import annotations

import argparse
import json
import sys

from pointllm.eval.results import TASKS

_DEFAULT_PROMPT = {"modelnet-cls": 0, "objaverse-cls": 0, "objaverse-caption": 2}


def _fmt(value: float | None) -> str:
    return "null" if value is None else f"{value:.2f}"


def _worker_argv(args: argparse.Namespace) -> list[str]:
    """The `eval run` options given in args, as a command line, without --nproc."""
    argv = []
    for action in args.run_parser._actions:
        value = getattr(args, action.dest, None)
        if not action.option_strings or action.dest == "nproc" or value is None or value is False:
            continue
        flag = action.option_strings[0]
        argv += [flag] if action.nargs == 0 else [flag, str(value)]
    return argv


def _run_processes(args: argparse.Namespace, prompt_index: int) -> dict:
    """`eval run --nproc N`: the same run in N processes, merged; a failed rank is one line."""
    from pointllm.cli import CommandError
    from pointllm.eval.run import ShardsFailed, evaluate_with_workers

    try:
        return evaluate_with_workers(
            args.nproc,
            _worker_argv(args),
            args.task,
            args.data_path,
            prompt_index,
            args.output,
            anno_path=args.anno_path,
            limit=args.limit,
            batch_size=args.batch_size,
            device=args.device,
            trust_pickle=args.trust_pickle,
            verbose=args.verbose,
        )
    except ShardsFailed as exc:
        raise CommandError(str(exc)) from exc


def _run(args: argparse.Namespace) -> int:
    """Generate benchmark results (resuming), print where they went and the matcher score."""
    prompt_index = _DEFAULT_PROMPT[args.task] if args.prompt_index is None else args.prompt_index
    if args.nproc is not None:
        summary = _run_processes(args, prompt_index)
    else:
        summary = _evaluate(args, prompt_index)
    rank = "" if summary["rank"] is None else f"rank {summary['rank']}: "
    print(f"{rank}{summary['total']} results for {summary['prompt']!r} in {summary['output']}")
    matcher = summary["matcher"]
    if matcher is not None:
        print(
            f"matcher accuracy ({matcher['class_set']}): {matcher['accuracy']:.2f}% "
            f"({matcher['correct_predictions']}/{matcher['total_predictions']}, "
            f"{matcher['unmatched']} naming no class)"
        )
    return 0


def _evaluate(args: argparse.Namespace, prompt_index: int) -> dict:
    """`eval run` in this process, or as one torchrun worker (whose errors name its rank)."""
    from pointllm.cli import CommandError
    from pointllm.eval.run import torchrun_rank

    rank, world_size, _ = torchrun_rank()
    try:
        return _evaluate_here(args, prompt_index)
    except (ValueError, FileNotFoundError, PermissionError) as exc:
        if world_size == 1:
            raise
        raise CommandError(f"rank {rank}: {exc}") from exc


def _evaluate_here(args: argparse.Namespace, prompt_index: int) -> dict:
    from pointllm.eval.run import evaluate_model

    return evaluate_model(
        args.task,
        args.model,
        args.data_path,
        prompt_index,
        args.output,
        anno_path=args.anno_path,
        limit=args.limit,
        batch_size=args.batch_size,
        sample=args.sample,
        seed=args.seed,
        max_new_tokens=args.max_new_tokens,
        device=args.device,
        dtype=args.dtype,
        trust_pickle=args.trust_pickle,
    )


def _judge(args: argparse.Namespace) -> int:
    """Judge a results file with an OpenAI-compatible LLM; print the summary."""
    from pointllm.eval.judge import JudgeSettings, api_key_from_env, run_judge
    from pointllm.eval.matcher import class_set_for, class_set_named
    from pointllm.eval.results import evaluated_path, infer_task, load_results

    data = load_results(args.results)
    task = args.task or infer_task(data)
    classes = None
    if task == "modelnet-cls":
        if args.classes:
            class_set = class_set_named(args.classes)
        else:
            pairs = [
                (r["ground_truth"], r["label_name"]) for r in data["results"] if "label_name" in r
            ]
            class_set = (
                class_set_for(pairs, args.results) if pairs else class_set_named("modelnet40")
            )
        classes = class_set.classes
    settings = JudgeSettings(
        base_url=args.base_url,
        model=args.judge_model,
        api_key=api_key_from_env(args.api_key_env),
        workers=args.workers,
        max_retries=args.max_retries,
        backoff_s=args.backoff,
        timeout_s=args.timeout,
        temperature=args.temperature,
        max_tokens=args.max_tokens,
    )
    summary = run_judge(args.results, task, settings, classes=classes)
    if task == "objaverse-caption":
        line = (
            f"average score {summary['average_score']:.2f} "
            f"(clean {summary['clean_average_score']:.2f})"
        )
    else:
        line = f"accuracy {summary['accuracy']:.2f}% (clean {summary['clean_accuracy']:.2f}%)"
    print(
        f"{task}: {line}; {summary['total_predictions']} judged, "
        f"{summary['invalid_responses']} invalid replies, "
        f"{summary['prompt_tokens']}+{summary['completion_tokens']} tokens, "
        f"cost ${summary['GPT_cost']:.4f}"
    )
    print(f"summary: {evaluated_path(args.results, settings.model)}")
    if summary["failed"]:
        print(
            f"{summary['failed']} items failed after {settings.max_retries} retries; rerun the "
            "same command to judge them",
            file=sys.stderr,
        )
        return 1
    return 0


def _metrics(args: argparse.Namespace) -> int:
    """Caption metrics of a results file: a table, or one JSON object with --json."""
    from pointllm.eval.metrics import METRIC_KEYS, evaluate_captions
    from pointllm.eval.results import evaluated_path

    scores = evaluate_captions(
        args.results,
        sbert_model=args.sbert_model,
        simcse_model=args.simcse_model,
        device=args.device,
        progress=not args.json,
    )
    if args.json:
        print(json.dumps(scores))
        return 0
    width = max(map(len, METRIC_KEYS))
    for key in METRIC_KEYS:
        print(f"{key:<{width}}  {_fmt(scores[key]):>6}")
    models = scores["models"]
    print(f"sentence-bert: {models['sbert'] or 'none'}; simcse: {models['simcse'] or 'none'}")
    print(f"per-sample scores: {evaluated_path(args.results, 'traditional')}")
    return 0


def _report(args: argparse.Namespace) -> int:
    """Write the Markdown report and chart of one or more runs."""
    from pointllm.eval.report import write_report

    runs = write_report(
        args.runs, args.output, args.chart, judge=args.judge, published=not args.no_published
    )
    print(f"report of {len(runs)} run(s): {args.output}")
    return 0


def _add_run(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run",
        help="generate benchmark answers (batched, resumable) in the original results format",
        description="Ask the model the benchmark prompt about every object and write "
        '{"prompt", "results": [{object_id, ground_truth, model_output, label_name?}]}. '
        "Interrupt and rerun the same command to continue where it stopped.",
    )
    p.add_argument("--task", required=True, choices=TASKS)
    p.add_argument(
        "--model", required=True, help="PointLLM checkpoint folder or Hub id org/name[@revision]"
    )
    p.add_argument(
        "--data-path",
        required=True,
        help="ModelNet40: the .dat/.npz test file; otherwise the folder of point files",
    )
    p.add_argument(
        "--anno-path",
        help="ground-truth captions JSON (objaverse-*), or a classification split "
        "{object_id, label, label_name} list with a point folder (modelnet-cls)",
    )
    p.add_argument(
        "--prompt-index",
        type=int,
        help="0 'What is this?', 1 'This is an object of ', 2 'Caption this 3D model in "
        "detail.' (default: 0 for classification, 2 for captioning)",
    )
    p.add_argument("--output", required=True, help="results JSON (resumed if it exists)")
    p.add_argument("--limit", type=int, help="only the first N objects")
    p.add_argument("--batch-size", type=int, default=8, help="objects per generate call (8)")
    p.add_argument(
        "--sample",
        action="store_true",
        help="sample like the original (temperature 1, top-k 50, top-p 0.95) instead of greedy",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed for --sample (0)")
    p.add_argument("--max-new-tokens", type=int, default=256, help="answer length cap (256)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (auto)")
    p.add_argument("--dtype", default="auto", help="auto, fp32, bf16 or fp16 (auto)")
    p.add_argument(
        "--trust-pickle",
        action="store_true",
        help="allow reading the original ModelNet40 .dat pickle (runs code: only files you trust)",
    )
    p.add_argument(
        "--nproc",
        type=int,
        help="split the objects over N processes on this node (torchrun; process i on cuda:i, "
        "or the CPU) and merge their answers into --output",
    )
    p.set_defaults(func=_run, run_parser=p)


def _add_judge(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "judge",
        help="score results with an LLM judge over an OpenAI-compatible endpoint",
        description="Judge every answer of a results file (parallel, retried, resumable); "
        "writes X_evaluated_<judge>.jsonl as items come in and the summary "
        "X_evaluated_<judge>.json (accuracy, clean_accuracy, average_score, ...).",
    )
    p.add_argument("--results", required=True, help="results JSON from `pointllm eval run`")
    p.add_argument("--task", choices=TASKS, help="benchmark (default: inferred from the file)")
    p.add_argument("--base-url", required=True, help="e.g. https://api.openai.com/v1")
    p.add_argument("--judge-model", required=True, help="model name at the endpoint")
    p.add_argument(
        "--api-key-env",
        default="OPENAI_API_KEY",
        help="environment variable holding the key (OPENAI_API_KEY; unset: a dummy key)",
    )
    p.add_argument(
        "--classes",
        choices=("modelnet40", "synthetic"),
        help="class list for modelnet-cls (default: from the results' label names)",
    )
    p.add_argument("--workers", type=int, default=8, help="requests in flight (8)")
    p.add_argument("--max-retries", type=int, default=6, help="retries on 429/5xx/errors (6)")
    p.add_argument("--backoff", type=float, default=1.0, help="first retry delay, doubling (1 s)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per request (120)")
    p.add_argument("--temperature", type=float, default=0.0, help="judge temperature (0)")
    p.add_argument("--max-tokens", type=int, default=512, help="judge reply cap (512)")
    p.set_defaults(func=_judge, needs_model=False)


def _add_metrics(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "metrics",
        help="BLEU, ROUGE, METEOR, Sentence-BERT and SimCSE scores of caption results",
        description="Traditional caption metrics with the original definitions, offline. "
        "Per-sample scores go to X_evaluated_traditional.json beside the results.",
    )
    p.add_argument("--results", required=True, help="caption results JSON")
    p.add_argument("--json", action="store_true", help="print one JSON object of mean scores")
    p.add_argument(
        "--sbert-model",
        help="local sentence-transformers folder, e.g. all-mpnet-base-v2 as in the paper "
        "(default: the embedded all-MiniLM-L6-v2)",
    )
    p.add_argument(
        "--simcse-model", help="local sup-simcse-roberta-large folder (default: SimCSE is null)"
    )
    p.add_argument("--device", help="torch device for the encoders (default: cuda if available)")
    p.set_defaults(func=_metrics)


def _add_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="Markdown table and bar chart of runs, with the published PointLLM numbers",
        description="Collect run folders (or results files) and their evaluations into a "
        "Markdown table, per-class accuracy tables and a bar-chart PNG.",
    )
    p.add_argument("runs", nargs="+", help="run folders or results files (one row each)")
    p.add_argument("--output", required=True, help="Markdown file to write")
    p.add_argument("--chart", help="PNG path (default: the output with .png)")
    p.add_argument("--judge", help="judge model whose summaries to use (default: the newest)")
    p.add_argument("--no-published", action="store_true", help="leave out the reference rows")
    p.set_defaults(func=_report, needs_model=False)


_SUBCOMMANDS = (_add_run, _add_judge, _add_metrics, _add_report)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `eval` and its subcommands to the top-level `pointllm` parser."""
    parser = subparsers.add_parser("eval", help="benchmarks: run, judge, caption metrics, report")
    sub = parser.add_subparsers(dest="eval_command", metavar="SUBCOMMAND", required=True)
    for add in _SUBCOMMANDS:
        add(sub)
