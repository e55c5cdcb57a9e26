"""`pointllm demo`: the phase driver's reuse rules, and the real `--quick` pipeline end to end."""

from __future__ import annotations

import json
import time

import pytest

from pointllm.cli import main
from pointllm.demo import run as demo

SUMMARY_KEYS = {
    "accuracy",
    "num_categories",
    "num_eval_objects",
    "caption_metrics",
    "seed",
    "precision",
    "precision_reason",
    "phases",
    "phase_cpu_seconds",
    "total_seconds",
    "model_dir",
}


# ---- the driver, with stand-in phases -----------------------------------------------------------


@pytest.fixture
def fake_phases(monkeypatch):
    """Replace every phase by a stand-in that writes the phase's output files and counts calls."""
    calls: list[str] = []

    def runner(name):
        def run(ctx):
            calls.append(name)
            for path in demo.phase_outputs(ctx, name):
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(name)
            result = {"key": f"{name} done"}
            if name == "eval":
                result |= {
                    "accuracy": 0.5,
                    "num_categories": 16,
                    "num_eval_objects": 32,
                    "caption_metrics": {"bleu-1": 10.0},
                }
            if name == "chat":
                result["examples"] = []
            return result

        return run

    monkeypatch.setattr(demo, "_RUNNERS", {name: runner(name) for name in demo.PHASES})
    return calls


def test_rerun_reuses_finished_phases_and_writes_the_same_summary(tmp_path, fake_phases):
    first = demo.run_demo(tmp_path, quick=True, progress=False)
    assert fake_phases == list(demo.PHASES)
    assert set(first) == SUMMARY_KEYS
    assert set(first["phases"]) == set(demo.PHASES)
    assert first["total_seconds"] == pytest.approx(sum(first["phases"].values()), abs=0.05)

    fake_phases.clear()
    second = demo.run_demo(tmp_path, quick=True, progress=False)
    assert fake_phases == []
    assert second == first
    assert json.loads((tmp_path / "summary.json").read_text()) == first


def test_a_missing_output_reruns_that_phase_and_everything_after(tmp_path, fake_phases):
    demo.run_demo(tmp_path, quick=True, progress=False)
    fake_phases.clear()
    (tmp_path / "stage2" / "model.safetensors").unlink()
    demo.run_demo(tmp_path, quick=True, progress=False)
    assert fake_phases == ["stage2", "eval", "chat"]


def test_fresh_or_other_settings_rerun_every_phase(tmp_path, fake_phases):
    demo.run_demo(tmp_path, quick=True, progress=False)
    fake_phases.clear()
    demo.run_demo(tmp_path, quick=True, fresh=True, progress=False)
    assert fake_phases == list(demo.PHASES)
    fake_phases.clear()
    demo.run_demo(tmp_path, quick=False, progress=False)  # the full plan: nothing matches
    assert fake_phases == list(demo.PHASES)


def test_another_seed_reruns_every_phase_with_that_seed(tmp_path, fake_phases, monkeypatch, capsys):
    seen: list[int] = []
    data = demo._RUNNERS["data"]
    monkeypatch.setitem(demo._RUNNERS, "data", lambda ctx: seen.append(ctx.plan.seed) or data(ctx))
    assert main(["demo", "--quick", "--out", str(tmp_path)]) == 0
    fake_phases.clear()
    assert main(["demo", "--quick", "--out", str(tmp_path), "--seed", "7"]) == 0
    assert fake_phases == list(demo.PHASES) and seen == [0, 7]
    assert json.loads((tmp_path / "summary.json").read_text())["seed"] == 7
    assert main(["demo", "--quick", "--out", str(tmp_path), "--seed", "-1"]) == 2
    assert "--seed -1" in capsys.readouterr().out


def test_an_edited_recipe_reruns_its_stage_and_later_phases(tmp_path, fake_phases, monkeypatch):
    recipes = tmp_path / "configs"
    recipes.mkdir()
    for stage in (0, 1, 2):
        name = f"demo_stage{stage}.yaml"
        (recipes / name).write_bytes(demo.recipe_path(name).read_bytes())
    monkeypatch.setattr(demo, "recipe_path", lambda name: recipes / name)
    out = tmp_path / "run"
    demo.run_demo(out, quick=True, progress=False)
    fake_phases.clear()
    with open(recipes / "demo_stage2.yaml", "a") as recipe:
        recipe.write("learning_rate: 1.0e-4\n")
    demo.run_demo(out, quick=True, progress=False)
    assert fake_phases == ["stage2", "eval", "chat"]


def test_summary_records_the_precision_and_cpu_time_per_phase(tmp_path, fake_phases, capsys):
    summary = demo.run_demo(tmp_path, quick=True, progress=False, precision="fp32")
    assert summary["precision"] == "fp32"
    assert summary["precision_reason"] == "fp32 asked for"
    assert set(summary["phase_cpu_seconds"]) == set(demo.PHASES)
    assert all(seconds >= 0 for seconds in summary["phase_cpu_seconds"].values())
    printed = capsys.readouterr().out
    assert printed.startswith("Precision: fp32 (fp32 asked for)")
    assert "CPU time" in printed

    # Another precision retrains: every phase from stage 0 on runs again.
    fake_phases.clear()
    summary = demo.run_demo(tmp_path, quick=True, progress=False, precision="bf16")
    assert fake_phases == ["stage0", "stage1", "stage2", "eval", "chat"]
    assert summary["precision"] == "bf16"


def test_the_precision_comes_from_the_environment_unless_given(tmp_path, fake_phases, monkeypatch):
    monkeypatch.setenv(demo.PRECISION_ENV, "bf16")
    assert demo.run_demo(tmp_path, quick=True, progress=False)["precision"] == "bf16"
    assert demo.run_demo(tmp_path, quick=True, progress=False, precision="fp32")["precision"] == (
        "fp32"
    )
    monkeypatch.setenv(demo.PRECISION_ENV, "fp16")
    assert main(["demo", "--quick", "--out", str(tmp_path)]) == 2


@pytest.mark.parametrize(
    ("cuda", "amx", "isa", "mode", "why"),
    [
        (False, True, None, "bf16", "AMX tiles"),
        (False, True, "AVX2", "fp32", "ONEDNN_MAX_CPU_ISA=AVX2"),
        (False, True, "avx512_core_amx", "bf16", "AMX tiles"),
        (False, False, None, "fp32", "no AMX"),
        (True, False, None, "bf16", "CUDA GPU with bf16"),
    ],
)
def test_auto_precision_is_bf16_only_where_it_is_fast(monkeypatch, cuda, amx, isa, mode, why):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    if isa is None:
        monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    else:
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", isa)
    chosen = demo.choose_precision("auto")
    assert chosen.mode == mode and why in chosen.reason
    assert demo.choose_precision("fp32").mode == "fp32"
    with pytest.raises(ValueError, match="unknown precision 'fp16'"):
        demo.choose_precision("fp16")


def test_a_failing_phase_leaves_no_record(tmp_path, fake_phases, monkeypatch):
    def broken(ctx):
        raise ValueError("stage 1 exploded")

    monkeypatch.setitem(demo._RUNNERS, "stage1", broken)
    with pytest.raises(ValueError, match="exploded"):
        demo.run_demo(tmp_path, quick=True, progress=False)
    records = sorted(p.stem for p in (tmp_path / "phases").iterdir())
    assert records == ["data", "stage0"]
    assert not (tmp_path / "summary.json").exists()


# ---- the real pipeline --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    import contextlib
    import io

    out = tmp_path_factory.mktemp("demo")
    printed = io.StringIO()
    started = time.perf_counter()
    with contextlib.redirect_stdout(printed):
        status = main(["demo", "--quick", "--out", str(out)])
    return out, status, time.perf_counter() - started, printed.getvalue()


@pytest.mark.slow  # a few minutes of real training: `.ci/run` runs it after `make test`
def test_quick_demo_runs_every_phase_and_beats_chance(quick_run):
    out, status, _, printed = quick_run
    assert status == 0
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) == SUMMARY_KEYS
    assert list(summary["phases"]) == list(demo.PHASES)
    assert all(seconds > 0 for seconds in summary["phases"].values())
    assert all(summary["phase_cpu_seconds"][name] > 0 for name in ("stage0", "stage1", "stage2"))

    # The precision auto picks here, said before the first phase and in the summary.
    chosen = demo.choose_precision("auto")
    assert (summary["precision"], summary["precision_reason"]) == (chosen.mode, chosen.reason)
    assert printed.startswith(f"Precision: {chosen.mode} ({chosen.reason})")
    stage0 = json.loads((out / "encoder" / "point_bert_summary.json").read_text())
    assert stage0["precision"] == chosen.mode

    # Every phase left its files.
    assert (out / "synth" / "anno" / "val_cls.json").is_file()
    assert (out / "encoder" / "point_bert.pt").is_file()
    assert (out / "encoder" / "point_bert_summary.json").is_file()
    for stage in ("stage1", "stage2"):
        assert (out / stage / "config.json").is_file()
        assert (out / stage / "model.safetensors").is_file()
    assert summary["model_dir"] == str((out / "stage2").resolve())
    classification = json.loads((out / "eval" / "classification.json").read_text())
    assert classification["prompt"] == "What is this?"
    assert len(classification["results"]) == summary["num_eval_objects"] == demo.QUICK.eval_objects
    assert (out / "eval" / "captions_evaluated_traditional.json").is_file()
    assert set(summary["caption_metrics"]) >= {"bleu-1", "rouge-l", "sbert_similarity"}
    examples = json.loads((out / "chat" / "examples.json").read_text())
    assert len(examples) == 3 and all(e["answer"].strip() for e in examples)
    for example in examples:
        assert (out / "chat" / f"{example['object_id']}.png").stat().st_size > 1000

    # Held-out generative classification beats chance (the held-out objects were never trained on).
    train_ids = set(json.loads((out / "synth" / "meta.json").read_text())["split"]["train"])
    assert not train_ids & {r["object_id"] for r in classification["results"]}
    assert summary["num_categories"] >= 12
    assert summary["accuracy"] > 2 / summary["num_categories"], summary


@pytest.mark.slow
def test_quick_demo_rerun_reuses_every_phase(quick_run, capsys):
    out, _, first_seconds, _ = quick_run
    before = json.loads((out / "summary.json").read_text())
    capsys.readouterr()
    started = time.perf_counter()
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    assert time.perf_counter() - started < min(30.0, first_seconds / 3)
    printed = capsys.readouterr().out
    assert printed.count("reused") == len(demo.PHASES)
    assert json.loads((out / "summary.json").read_text()) == before
