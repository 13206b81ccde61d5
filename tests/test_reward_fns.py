"""User reward functions (`--reward-fn file.py:fn`): loading, calling, one-line errors; examples; columns."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from rlhf.data.loader import ColumnKeys, load_prompt_table, load_prompts
from rlhf.errors import UserError
from rlhf.reward_fns import RewardFunction, is_function_spec, load_reward_fn
from rlhf.tasks import STYLES, get_task, judge

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
PROMPTS = ["Q: What is 2+3?\nA:", "Q: What is the capital of France?\nA:"]


def _load_examples():
    spec = importlib.util.spec_from_file_location(
        "reward_function_examples", EXAMPLES / "reward_functions.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


examples = _load_examples()


def write(tmp_path: Path, body: str, name: str = "rewards.py") -> Path:
    path = tmp_path / name
    path.write_text(body)
    return path


def user_error(fn, *args) -> str:
    """The message of the UserError `fn(*args)` raises, checked to be one line."""
    with pytest.raises(UserError) as info:
        fn(*args)
    msg = str(info.value)
    assert "\n" not in msg, msg
    return msg


def fn_of(body: str) -> RewardFunction:
    """A RewardFunction named "r.py:f" whose `f` is defined by `body` (source text)."""
    scope: dict = {"np": np, "torch": torch, "math": math}
    exec(body, scope)
    return RewardFunction("r.py:f", scope["f"])


# ------------------------------------------------------------------------------------------------ specs


def test_is_function_spec():
    for spec in ("examples/reward_functions.py:exact_match", "mypkg.rewards:fmt", "r.py:f"):
        assert is_function_spec(spec)
    for spec in ("model", "length", "gold", "runs/demo/reward", "r.py"):
        assert not is_function_spec(spec)


# ---------------------------------------------------------------------------------------------- loading


def test_load_from_file_path(tmp_path):
    path = write(
        tmp_path, "def score(prompts, completions, **kw):\n    return [len(c) for c in completions]\n"
    )
    spec = f"{path}:score"
    reward = load_reward_fn(spec)
    assert reward.name == spec
    assert str(tmp_path) not in sys.path  # the file's directory is not left on the import path
    scores = reward(["a", "b"], ["xy", "xyz"], {})
    assert scores.dtype == torch.float32 and scores.tolist() == [2.0, 3.0]


def test_load_relative_file_path(tmp_path, monkeypatch):
    write(tmp_path, "def f(prompts, completions, **kw):\n    return [1.0] * len(prompts)\n")
    monkeypatch.chdir(tmp_path)
    assert load_reward_fn("rewards.py:f")(["a"], ["b"]).tolist() == [1.0]


def test_two_files_of_the_same_name_do_not_replace_each_other(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = write(tmp_path / "a", "def f(p, c, **k):\n    return [1]\n")
    b = write(tmp_path / "b", "def f(p, c, **k):\n    return [2]\n")
    fa, fb = load_reward_fn(f"{a}:f"), load_reward_fn(f"{b}:f")
    assert fa(["p"], ["c"]).tolist() == [1.0] and fb(["p"], ["c"]).tolist() == [2.0]


def test_file_may_define_dataclasses(tmp_path):
    # dataclasses look their module up in sys.modules, so the file must be registered while it runs.
    body = (
        "from __future__ import annotations\nfrom dataclasses import dataclass\n\n@dataclass\nclass W:\n"
        "    w: float\n\ndef f(p, c, **k):\n    return [W(0.5).w] * len(p)\n"
    )
    assert load_reward_fn(f"{write(tmp_path, body)}:f")(["p"], ["c"]).tolist() == [0.5]


def test_load_from_module(tmp_path, monkeypatch):
    pkg = tmp_path / "myrewards_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    write(pkg, "def fmt(prompts, completions, **kw):\n    return [0.25 for _ in completions]\n", "fmt.py")
    monkeypatch.syspath_prepend(str(tmp_path))
    reward = load_reward_fn("myrewards_pkg.fmt:fmt")
    assert reward.name == "myrewards_pkg.fmt:fmt"
    assert reward(["a", "b"], ["c", "d"]).tolist() == [0.25, 0.25]


def test_missing_file(tmp_path):
    spec = f"{tmp_path / 'nope.py'}:f"
    msg = user_error(load_reward_fn, spec)
    assert spec in msg and "not found" in msg


def test_directory_instead_of_file(tmp_path):
    msg = user_error(load_reward_fn, f"{tmp_path}/:f")
    assert "directory" in msg


def test_missing_module():
    msg = user_error(load_reward_fn, "no_such_module_xyz.rewards:f")
    assert "no_such_module_xyz.rewards:f" in msg and "no module named" in msg


def test_import_error_in_file(tmp_path):
    path = write(tmp_path, "import no_such_dependency_xyz\n")
    spec = f"{path}:f"
    msg = user_error(load_reward_fn, spec)
    assert spec in msg and "ModuleNotFoundError: No module named 'no_such_dependency_xyz'" in msg


def test_import_error_in_module(tmp_path, monkeypatch):
    write(tmp_path, "raise RuntimeError('bad config\\nsecond line')\n", "broken_rewards_mod.py")
    monkeypatch.syspath_prepend(str(tmp_path))
    msg = user_error(load_reward_fn, "broken_rewards_mod:f")
    assert "broken_rewards_mod:f" in msg and "RuntimeError: bad config" in msg and "second" not in msg


def test_syntax_error_in_file(tmp_path):
    path = write(tmp_path, "def f(:\n")
    spec = f"{path}:f"
    assert "SyntaxError" in user_error(load_reward_fn, spec)


def test_missing_attribute(tmp_path):
    path = write(tmp_path, "def g(p, c):\n    return []\n")
    spec = f"{path}:f"
    msg = user_error(load_reward_fn, spec)
    assert spec in msg and "has no function 'f'" in msg and "'g'" not in msg


def test_not_callable(tmp_path):
    path = write(tmp_path, "f = 3\n")
    spec = f"{path}:f"
    msg = user_error(load_reward_fn, spec)
    assert spec in msg and "int, not a function" in msg


def test_spec_without_function_name(tmp_path):
    assert "does not name a function" in user_error(load_reward_fn, "rewards.py:")


# ---------------------------------------------------------------------------------------------- calling


def test_columns_are_keyword_arguments():
    reward = fn_of(
        "def f(prompts, completions, answer, **kw):\n"
        "    return [float(c == a) for c, a in zip(completions, answer)]\n"
    )
    assert reward(PROMPTS, ["5", "Lyon"], {"answer": ["5", "Paris"], "id": [1, 2]}).tolist() == [1.0, 0.0]


@pytest.mark.parametrize(
    "result",
    [
        "[1, 2.5]",
        "(1, 2.5)",
        "[np.float32(1), np.int64(2.5 * 2) / 2]",
        "torch.tensor([1, 2.5], requires_grad=True)",
        "np.array([1, 2.5])",
        "np.array([1, 2])[::1] * [1, 1.25]",
        "[torch.tensor(1), torch.tensor(2.5)]",
    ],
)
def test_accepted_return_types(result):
    scores = fn_of(f"def f(p, c, **k):\n    return {result}\n")(PROMPTS, ["a", "b"])
    assert scores.dtype == torch.float32 and scores.shape == (2,) and scores.tolist() == [1.0, 2.5]


def test_exception_inside_names_function_and_first_prompt():
    reward = fn_of("def f(p, c, **k):\n    raise ValueError('boom\\nmore detail')\n")
    msg = user_error(reward, PROMPTS * 4, ["x"] * 8)
    assert (
        msg == "reward function r.py:f raised ValueError: boom "
        "(batch of 8 prompts, first: 'Q: What is 2+3?\\nA:')"
    )


def test_exception_quotes_a_long_prompt_truncated():
    reward = fn_of("def f(p, c, **k):\n    raise KeyError('answer')\n")
    msg = user_error(reward, ["Q: " + "x" * 500], ["c"])
    assert "KeyError: 'answer'" in msg and "x" * 100 not in msg and "...'" in msg


def test_unexpected_column_is_a_type_error_listing_the_columns():
    reward = fn_of("def f(prompts, completions):\n    return [0.0] * len(prompts)\n")
    msg = user_error(reward, PROMPTS, ["a", "b"], {"answer": ["1", "2"]})
    assert "raised TypeError" in msg and "unexpected keyword argument 'answer'" in msg and "answer" in msg


def test_column_named_like_an_argument():
    reward = fn_of("def f(prompts, completions, **k):\n    return [0.0] * len(prompts)\n")
    msg = user_error(reward, PROMPTS, ["a", "b"], {"completions": ["1", "2"]})
    assert "'completions'" in msg and "rename the column" in msg


def test_wrong_length():
    reward = fn_of("def f(p, c, **k):\n    return [1.0, 2.0, 3.0]\n")
    msg = user_error(reward, PROMPTS * 4, ["x"] * 8)
    assert "r.py:f" in msg and "returned 3 scores for 8 completions" in msg


@pytest.mark.parametrize(
    ("result", "expected"),
    [
        ("None", "returned None"),
        ("'1.0'", "returned a str ('1.0')"),
        ("1.0", "returned a float"),
        ("{'a': 1}", "returned a dict"),
        ("[1.0, 'good']", "returned a str at index 1 ('good')"),
        ("[1.0, True]", "returned a bool at index 1"),
        ("[1.0, None]", "returned a NoneType at index 1"),
        ("[[1.0], [2.0]]", "returned a list at index 0"),
        ("torch.ones(2, 1)", "returned a tensor of shape (2, 1)"),
        ("np.array(['a', 'b'])", "returned an array of dtype <U1"),
        ("torch.tensor([True, False])", "of dtype torch.bool"),
    ],
)
def test_wrong_return_type(result, expected):
    msg = user_error(fn_of(f"def f(p, c, **k):\n    return {result}\n"), PROMPTS, ["a", "b"])
    assert msg.startswith("reward function r.py:f returned") and expected in msg


@pytest.mark.parametrize(
    ("result", "shown"),
    [
        ("[1.0, float('nan')]", "nan"),
        ("[1.0, math.inf]", "inf"),
        ("torch.tensor([1.0, -math.inf])", "-inf"),
        ("np.array([1.0, np.nan])", "nan"),
        ("[1.0, 1e300]", "1e+300, too large for float32,"),
    ],
)
def test_non_finite_score_names_index_and_prompt(result, shown):
    msg = user_error(fn_of(f"def f(p, c, **k):\n    return {result}\n"), PROMPTS, ["a", "b"])
    assert f"returned {shown} at index 1, for prompt 'Q: What is the capital of France?\\nA:'" in msg


def test_empty_batch():
    assert fn_of("def f(p, c, **k):\n    return []\n")([], []).shape == (0,)


# -------------------------------------------------------------------------------------------- examples


def test_exact_match_by_hand():
    em = examples.exact_match
    prompts = ["q"] * 6
    completions = [" Paris.", "Paris", "  Paris  ", "paris", "Paris. Hope this helps!", "KEL!"]
    answers = [" Paris.", " Paris.", "Paris", "Paris", "Paris", " KEL."]
    assert em(prompts, completions, answers) == [1.0, 1.0, 1.0, 0.0, 0.0, 1.0]


def test_concise_format_by_hand():
    cf = examples.concise_format
    out = cf(
        ["q"] * 5, [" Paris.", " Paris. Sure, hope this helps!", " Paris. Paris. Paris.", " ...", "a " * 20]
    )
    assert out[0] == 1.0
    assert out[1] == pytest.approx(0.25)  # a second sentence and two filler phrases
    assert out[2] == pytest.approx(0.0)  # two more sentences and two repeats
    assert out[3] == -1.0
    assert -1.0 <= out[4] < 0


def test_examples_rank_ideal_answers_first_on_the_builtin_task():
    task = get_task("instruct", seed=0)
    prompts = task.prompts(60)
    answers = task.prompt_columns(prompts)["answer"]
    em = load_reward_fn(f"{EXAMPLES / 'reward_functions.py'}:exact_match")
    cf = load_reward_fn(f"{EXAMPLES / 'reward_functions.py'}:concise_format")
    cols = {"answer": answers}
    assert em(prompts, answers, cols).mean() == 1.0 and cf(prompts, answers, cols).mean() == 1.0
    for style in STYLES:
        completions = [task.response(p, style) for p in prompts]
        assert em(prompts, completions, cols).mean() == (1.0 if style == "concise" else 0.0)
        if style not in ("concise", "wrong"):  # a format check cannot see a wrong answer
            assert cf(prompts, completions, cols).mean() <= 0.5


def test_example_prompt_file_matches_the_builtin_task():
    prompts, columns = load_prompt_table(EXAMPLES / "prompts_with_answers.jsonl")
    assert len(prompts) == 200 and list(columns) == ["answer"]
    assert prompts == get_task("instruct", seed=0).prompts(200, split="train")
    assert all(judge.score(p, a) == 1.0 for p, a in zip(prompts, columns["answer"]))


# ---------------------------------------------------------------------------------------- prompt table


def test_load_prompt_table_jsonl(tmp_path):
    rows = [
        {"prompt": "p1", "answer": "a1", "id": 1},
        {"prompt": "p2", "answer": "a2"},
        {"prompt": "p3", "level": "hard", "answer": None},
    ]
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    prompts, columns = load_prompt_table(path)
    assert prompts == load_prompts(path) == ["p1", "p2", "p3"]
    assert columns == {"answer": ["a1", "a2", None], "id": [1, None, None], "level": [None, None, "hard"]}


def test_load_prompt_table_csv_with_renamed_prompt(tmp_path):
    path = tmp_path / "prompts.csv"
    path.write_text('question,answer\nWhat is 2+3?,5\n"Say hi, please",hi\n')
    keys = ColumnKeys(prompt="question")
    prompts, columns = load_prompt_table(path, keys)
    assert prompts == ["What is 2+3?", "Say hi, please"]
    assert columns == {"answer": ["5", "hi"]}  # CSV cells stay strings


def test_load_prompt_table_hh_transcripts_have_no_columns(tmp_path):
    row = {"chosen": "\n\nHuman: hi\n\nAssistant: hello", "rejected": "\n\nHuman: hi\n\nAssistant: go away"}
    path = tmp_path / "hh.jsonl"
    path.write_text(json.dumps(row) + "\n")
    assert load_prompt_table(path) == (["\n\nHuman: hi\n\nAssistant:"], {})


# ----------------------------------------------------------------------------------------- built-in task


def test_instruct_prompt_columns_answers_score_one():
    task = get_task("instruct", seed=0)
    prompts = task.prompts(90) + task.prompts(30, split="test")
    answers = task.prompt_columns(prompts)["answer"]
    assert len(answers) == len(prompts)
    assert all(judge.score(p, a) == 1.0 for p, a in zip(prompts, answers))
