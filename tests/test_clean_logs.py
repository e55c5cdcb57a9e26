"""Clean logs: pointllm's own code raises no deprecation warnings, and its commands print no
third-party deprecation or duplicate-registration noise unless --verbose asks for it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap

# Every pointllm module is imported and the main paths run (synthetic data, point-cloud loading,
# tokenization, two training steps, generation) with deprecations attributed to pointllm turned
# into errors. The first lines prove the filter matches pointllm modules.
EXERCISE = textwrap.dedent(
    r"""
    import warnings

    OURS = r"pointllm(\..*)?$"
    for category in (DeprecationWarning, FutureWarning, PendingDeprecationWarning):
        warnings.filterwarnings("error", category=category, module=OURS)
    try:
        warnings.warn_explicit("probe", FutureWarning, "x.py", 1, module="pointllm.probe")
    except FutureWarning:
        pass
    else:
        raise SystemExit("the warning filter does not match pointllm modules")

    import importlib, pkgutil, sys, tempfile
    from pathlib import Path

    import pointllm

    # (__main__ would run the command line.)
    modules = [m.name for m in pkgutil.walk_packages(pointllm.__path__, "pointllm.")
               if not m.name.endswith("__main__")]
    for name in modules:
        importlib.import_module(name)

    import numpy as np
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from pointllm.data.io import load_point_cloud
    from pointllm.data.synthetic import generate_dataset
    from pointllm.model.backbones import embedded_backbone_dir
    from pointllm.train import parse_args, train

    root = Path(tempfile.mkdtemp())
    data = generate_dataset(root / "data", 4, seed=0, num_points=64)
    cloud_file = sorted(Path(data["points_dir"]).glob("*.npy"))[0]
    cloud = load_point_cloud(cloud_file, num_points=64)
    xyz, rgb = cloud[:, :3], cloud[:, 3:]
    ply = root / "cloud.ply"
    header = "ply\nformat ascii 1.0\nelement vertex 64\nproperty float x\nproperty float y\n"
    header += "property float z\nproperty uchar red\nproperty uchar green\nproperty uchar blue\n"
    rows = [" ".join([*(f"{v:.6f}" for v in p), *(str(int(c * 255)) for c in q)])
            for p, q in zip(xyz, rgb)]
    ply.write_text(header + "end_header\n" + "\n".join(rows) + "\n")
    assert load_point_cloud(ply, num_points=64).shape == (64, 6)

    tokenizer = AutoTokenizer.from_pretrained(embedded_backbone_dir())
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2,
                         vocab_size=len(tokenizer), tie_word_embeddings=True)
    LlamaForCausalLM(config).save_pretrained(root / "llm")
    tokenizer.save_pretrained(root / "llm")
    argv = ["--model_name_or_path", str(root / "llm"), "--data_path", data["points_dir"],
            "--anno_path", data["stage1"], "--output_dir", str(root / "run"),
            "--trans_dim", "32", "--depth", "1", "--num_heads", "4", "--num_group", "4",
            "--group_size", "8", "--encoder_dims", "32", "--projector_hidden_dims", "48",
            "--num_points", "64", "--max_steps", "2", "--per_device_train_batch_size", "2",
            "--logging_steps", "1", "--save_strategy", "no", "--disable_tqdm", "true"]
    result = train(*parse_args(argv))
    assert result.global_step == 2 and not result.interrupted

    answer = pointllm.load(root / "run", device="cpu").generate(
        cloud, "What is this?", max_new_tokens=3, do_sample=False
    )
    print("exercised", len(modules), "modules; loss", result.summary["final_loss"],
          "answer", repr(answer))
    """
)
NOISE = re.compile(r"warning|deprecat|defined more than once", re.IGNORECASE)


def env() -> dict[str, str]:
    return dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")


def test_pointllm_raises_no_deprecation_warnings_of_its_own(embedded_dir):
    result = subprocess.run(
        [sys.executable, "-c", EXERCISE], env=env(), capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-4000:]
    match = re.search(r"exercised (\d+) modules; loss (\S+) answer '(.*)'", result.stdout)
    assert match, result.stdout
    assert int(match.group(1)) >= 30  # every module, not an empty walk
    assert float(match.group(2)) > 0


def test_commands_print_no_third_party_noise(tmp_path):
    commands = [
        ["--help"],
        ["data", "synth", "--out", str(tmp_path / "synth"), "--num", "3", "--num-points", "64"],
        ["doctor", "--json"],
        ["hpc", "render", "--scheduler", "pbs", "--job", "interactive"],
    ]
    for args in commands:
        result = subprocess.run(
            [sys.executable, "-m", "pointllm", *args],
            env=env(),
            capture_output=True,
            text=True,
            timeout=180,
        )
        noise = [line for line in result.stderr.splitlines() if NOISE.search(line)]
        assert not noise, (args, noise)
        if args[0] == "doctor":
            report = json.loads(result.stdout)
            assert result.returncode == report["exit_status"]
        else:
            assert result.returncode == 0, (args, result.stderr)
    assert (tmp_path / "synth" / "anno").is_dir()


# A command whose handler imports a third-party module that emits the seed's two messages.
NOISY_COMMAND = """
import argparse


def _run(args):
    import noisy_third_party  # noqa: F401
    return 0


def register(subparsers):
    subparsers.add_parser("noisy").set_defaults(func=_run, needs_model=False)
"""
NOISY_MODULE = """
import warnings

warnings.warn("Importing from timm.models.layers is deprecated, please import via timm.layers",
              FutureWarning)
warnings.warn("networkx backend defined more than once: nx-loopback", RuntimeWarning)
"""


def test_verbose_shows_the_third_party_noise_the_default_hides(tmp_path):
    (tmp_path / "noisy_command.py").write_text(NOISY_COMMAND)
    (tmp_path / "noisy_third_party.py").write_text(NOISY_MODULE)
    driver = (
        "import sys; import pointllm.cli as cli; "
        "cli.COMMAND_MODULES += ('noisy_command',); sys.exit(cli.main(sys.argv[1:]))"
    )
    outputs = {}
    for flags in ([], ["--verbose"]):
        result = subprocess.run(
            [sys.executable, "-c", driver, *flags, "noisy"],
            env=dict(env(), PYTHONPATH=str(tmp_path)),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        outputs[bool(flags)] = result.stderr
    assert outputs[False] == ""
    assert "FutureWarning: Importing from timm.models.layers is deprecated" in outputs[True]
    assert "RuntimeWarning: networkx backend defined more than once" in outputs[True]
