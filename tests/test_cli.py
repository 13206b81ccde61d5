"""The command line as users meet it: help, config precedence, and one-line errors for every bad input."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rlhf import cli
from rlhf.errors import UserError

REPO = Path(__file__).resolve().parents[1]
HH = (REPO / ".." / "shared" / "data" / "hh-rlhf-harmless" / "pairs.jsonl.gz").resolve()
GOOD = b'{"prompt": "Q: hi\\nA:", "response": " hello."}\n'

# name -> (file name, bytes or None for "do not create", line the error must point at or None)
BAD_DATA = {
    "not-utf8": ("latin1.jsonl", GOOD + b'{"prompt": "caf\xe9", "response": " x."}\n', 2),
    "truncated-jsonl": ("cut.jsonl", GOOD + b'{"prompt": "a", "resp', 2),
    "invalid-jsonl": ("comma.jsonl", GOOD + b'{"prompt": "a",, "response": "b"}\n', 2),
    "truncated-json": ("cut.json", b'[\n  {"prompt": "a", "response": " b."},\n  {"prompt": "c", "re', 3),
    "json-object-not-list": ("obj.json", b'{"prompt": "a", "response": " b."}\n', None),
    "json-list-of-numbers": ("nums.json", b'[\n  {"prompt": "a", "response": " b."},\n  3\n]\n', 3),
    "jsonl-row-not-object": ("rows.jsonl", GOOD + b'["a", "b"]\n', 2),
    "wrong-field-type": ("type.jsonl", GOOD + b'{"prompt": "a", "response": 3}\n', 2),
    "missing-field": ("miss.jsonl", GOOD + GOOD + b'{"prompt": "a"}\n', 3),
    "missing-csv-column": ("miss.csv", b"prompt,chosen\nhi,there\n", 2),
    "short-csv-row": ("short.csv", b"prompt,response\nhi,there\nalone\n", 3),
    "empty-file": ("empty.jsonl", b"", None),
    "blank-file": ("blank.jsonl", b"\n  \n", None),
    "empty-response": ("blank_resp.jsonl", GOOD + b'{"prompt": "a", "response": "   "}\n', 2),
    "unknown-extension": ("data.txt", GOOD, None),
    "no-extension": ("data", GOOD, None),
    "gz-name-not-gzip": ("plain.jsonl.gz", GOOD, None),
    "truncated-gzip": ("cut.jsonl.gz", gzip.compress(GOOD * 50)[:40], None),
    "missing-file": ("nope.jsonl", None, None),
    "directory": ("adir.jsonl", "dir", None),
}


def write_bad(directory: Path, name: str) -> str:
    fname, content, _ = BAD_DATA[name]
    if content == "dir":
        (directory / fname).mkdir(exist_ok=True)
    elif content is not None:
        (directory / fname).write_bytes(content)
    return fname


def check_one_line_error(code, stderr: str, fname: str, line: int | None) -> None:
    assert code not in (0, None), f"exit code {code}"
    assert "Traceback" not in stderr, stderr
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines[0].strip(), f"expected one line on stderr, got {stderr!r}"
    where = f"{fname}:{line}" if line is not None else fname
    assert lines[0].startswith(f"error: {where}: "), f"expected 'error: {where}: ...', got {lines[0]!r}"
    assert len(lines[0]) > len(f"error: {where}: ") + 10  # says what is wrong, not just where


# ------------------------------------------------------------------------------------------------ in-process
def run_main(argv: list[str], capsys) -> tuple[int | None, str, str]:
    code = 0
    try:
        cli.main(argv)
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("case", list(BAD_DATA))
@pytest.mark.parametrize("command", ["validate", "sft"])
def test_bad_data_gives_one_line_error(command, case, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    fname = write_bad(tmp_path, case)
    if command == "validate":
        argv = ["data", "validate", fname, "--out", "v"]
    else:
        argv = ["sft", "--data", fname, "--out", "s", "--no-progress", "--max-steps", "1"]
    code, _, err = run_main(argv, capsys)
    check_one_line_error(code, err, fname, BAD_DATA[case][2])
    if command == "sft":
        assert not (tmp_path / "s" / "model.safetensors").exists()


def test_sft_rejects_a_prompts_only_file(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "prompts.csv").write_text("prompt\nQ: hi\nQ: there\n")
    code, _, err = run_main(["sft", "--data", "prompts.csv", "--out", "s", "--no-progress"], capsys)
    check_one_line_error(code, err, "prompts.csv", None)
    # ... while `data validate` accepts it as a prompts file.
    code, out, err = run_main(["data", "validate", "prompts.csv", "--out", "v"], capsys)
    assert code == 0 and "schema:    prompts" in out and "rows:      2" in out


def test_data_validate_reports_a_good_file(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    rows = [{"prompt": f"Q: {i}?\nA:", "response": f" {i}."} for i in range(5)]
    with gzip.open(tmp_path / "ok.jsonl.gz", "wt") as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows))
    code, out, err = run_main(["data", "validate", "ok.jsonl.gz", "--out", "v"], capsys)
    assert code == 0, err
    assert "format:    jsonl (gzip)" in out and "schema:    sft" in out and "rows:      5" in out
    report = json.loads((tmp_path / "v" / "summary.json").read_text())
    assert report["rows"] == 5 and report["schema"] == "sft" and report["compressed"] is True


def test_unknown_command_is_one_line_error(capsys):
    code, _, err = run_main(["frobnicate"], capsys)
    assert code == 2 and err.startswith("error: unknown command 'frobnicate'") and len(err.splitlines()) == 1


# ------------------------------------------------------------------------------------------------ config files
CONFIGS = {
    "yaml": "batch_size: 7\nmax-steps: 3\nout: runs/from-file\noptim:\n  lr: 0.5\n  betas: [0.8, 0.9]\n"
    "arch:\n  n_layer: 2\n",
    "toml": 'batch_size = 7\nmax-steps = 3\nout = "runs/from-file"\n[optim]\nlr = 0.5\nbetas = [0.8, 0.9]\n'
    "[arch]\nn_layer = 2\n",
    "json": json.dumps(
        {
            "batch_size": 7,
            "max-steps": 3,
            "out": "runs/from-file",
            "optim": {"lr": 0.5, "betas": [0.8, 0.9]},
            "arch": {"n_layer": 2},
        }  # fmt: skip
    ),
}


@pytest.mark.parametrize("fmt", list(CONFIGS))
def test_config_precedence_defaults_file_flags(fmt, tmp_path):
    path = tmp_path / f"c.{fmt}"
    path.write_text(CONFIGS[fmt])
    _, default = cli.parse(["sft"])
    assert default.batch_size == 32 and default.optim.lr == 1e-3 and default.max_steps == 0

    _, from_file = cli.parse(["sft", "--config", str(path)])
    assert from_file.batch_size == 7 and from_file.max_steps == 3
    assert from_file.optim.lr == 0.5 and from_file.optim.betas == (0.8, 0.9)
    assert from_file.arch.n_layer == 2 and from_file.out == Path("runs/from-file")
    # Untouched options keep their defaults, including untouched siblings inside a nested section.
    assert from_file.optim.warmup_steps == default.optim.warmup_steps
    assert from_file.arch.n_embd == default.arch.n_embd and from_file.epochs == default.epochs

    _, flags = cli.parse(
        ["sft", f"--config={path}", "--batch-size", "9", "--optim.warmup-steps", "4", "--arch.n-layer", "3"]
    )
    assert flags.batch_size == 9 and flags.optim.warmup_steps == 4 and flags.arch.n_layer == 3
    assert flags.optim.lr == 0.5 and flags.max_steps == 3  # file values the flags did not touch survive


def test_reward_derived_defaults_follow_the_final_options(tmp_path):
    """Derived values (lr, epochs, max_length = 0 means 'auto') are computed from the final flags/file."""
    _, gpt = cli.parse(["reward"])
    assert (gpt.optim.lr, gpt.epochs, gpt.max_length) == (1e-3, 3.0, gpt.arch.block_size)
    _, hf = cli.parse(["reward", "--model", "minilm"])
    assert (hf.optim.lr, hf.epochs, hf.max_length) == (1e-4, 1.0, 128)
    _, small = cli.parse(["reward", "--arch.block-size", "64"])
    assert small.max_length == 64
    (tmp_path / "r.yaml").write_text("model: minilm\n")
    _, from_file = cli.parse(["reward", "--config", str(tmp_path / "r.yaml")])
    assert (from_file.optim.lr, from_file.epochs) == (1e-4, 1.0)
    _, explicit = cli.parse(["reward", "--model", "minilm", "--optim.lr", "2e-5", "--epochs", "3"])
    assert (explicit.optim.lr, explicit.epochs) == (2e-5, 3.0)


def test_only_the_reward_stage_defaults_to_the_large_pair_set():
    """`rlhf reward` trains on 36k built-in pairs (what reaches 0.9 gold agreement); SFT, PPO and the demo keep
    their own sizes - a shared default would make `rlhf demo` run for an hour."""
    assert cli.parse(["reward"])[1].task.n_train == 36_000
    assert cli.parse(["sft"])[1].task.n_train == 4_000
    assert cli.parse(["ppo"])[1].task.n_train == 4_000
    assert cli.parse(["reward", "--task.n-train", "4000"])[1].task.n_train == 4_000


@pytest.mark.parametrize(
    "fname,text,where",
    [
        ("u.yaml", "batch_size: 4\nbatch_sz: 8\n", "u.yaml"),
        ("u.toml", "[optim]\nlearning_rate = 0.1\n", "u.toml"),
        ("u.json", '{"arch": {"layers": 2}}', "u.json"),
        ("t.yaml", "batch_size: four\n", "t.yaml"),
        ("p.toml", "batch_size = 4\nlr = = 1\n", "p.toml:2"),
        ("p.json", '{"batch_size": 4,\n "lr": }', "p.json:2"),
        ("p.yaml", "a: 1\nb: 2\n  c: 3\n", "p.yaml:3"),
        ("list.yaml", "- 1\n- 2\n", "list.yaml"),
        ("c.ini", "batch_size=4\n", "c.ini"),
        ("nope.yaml", None, "nope.yaml"),
    ],
)
def test_bad_config_file_is_one_line_error(fname, text, where, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    if text is not None:
        (tmp_path / fname).write_text(text)
    with pytest.raises(UserError):
        cli.parse(["sft", "--config", fname])
    code, _, err = run_main(["sft", "--config", fname, "--out", "s"], capsys)
    assert code == 2 and "Traceback" not in err
    assert len(err.splitlines()) == 1 and err.startswith(f"error: {where}: "), err
    if fname.startswith("u."):
        assert "unknown option" in err


# ------------------------------------------------------------------------------------------------ subprocesses
@pytest.fixture(scope="module")
def subprocess_runs(tmp_path_factory):
    """The real `python -m rlhf` entry point: a few representative commands, run side by side (each pays
    torch's import, so the full matrix of bad inputs goes through `cli.main` in-process above)."""
    d = tmp_path_factory.mktemp("cli")
    write_bad(d, "missing-field")
    commands = {
        "help": ["--help"],
        "sft-missing-field": ["sft", "--data", "miss.jsonl", "--out", "s1", "--no-progress"],
    }
    if HH.exists():
        commands["hh"] = ["data", "validate", str(HH), "--out", "v3"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = {
        name: subprocess.Popen(
            [sys.executable, "-m", "rlhf", *args],
            cwd=d,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, args in commands.items()
    }
    results = {}
    for name, p in procs.items():
        out, err = p.communicate(timeout=300)
        results[name] = (p.returncode, out, err)
    return results


def test_help_lists_commands(subprocess_runs):
    code, out, err = subprocess_runs["help"]
    assert code == 0, err
    assert out.startswith("usage: rlhf <command>")
    listed = {line.strip() for line in out.splitlines() if line.startswith("  ")}
    for name, command in cli.COMMANDS.items():
        assert any(line.startswith(name + " ") and command.summary in line for line in listed), (name, out)
    assert {"sft", "reward", "sample", "data validate"} <= set(cli.COMMANDS)


def test_command_help_shows_field_docs(capsys):
    code, out, err = run_main(["sft", "--help"], capsys)
    assert code == 0, err
    assert "rlhf sft" in out
    flat = " ".join(out.split())
    for text in (
        "--batch-size",
        "Sequences per micro-batch.",
        "--optim.lr",
        "Peak learning rate.",
        "--max-steps",
        "--config",
        "--arch.n-layer",
        "Number of transformer blocks.",
    ):
        assert text in flat, text


@pytest.mark.parametrize("name,fname,line", [("sft-missing-field", "miss.jsonl", 3)])
def test_subprocess_errors_are_one_line(subprocess_runs, name, fname, line):
    code, out, err = subprocess_runs[name]
    assert code == 2
    check_one_line_error(code, err, fname, line)
    assert "Traceback" not in out


def test_validate_hh_rlhf_sample(subprocess_runs):
    if "hh" not in subprocess_runs:
        pytest.skip(f"{HH} not present")
    code, out, err = subprocess_runs["hh"]
    assert code == 0, err
    assert "Traceback" not in err
    assert "pairs:     1812 " in out and "schema:    pairs_implicit" in out
