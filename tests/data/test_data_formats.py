"""Users' data as they have it: every schema (text and conversational) in every container, conversations rendered
once and trained on their assistant turns only, mixtures of files, and one line naming FILE:ROW per bad input."""

from __future__ import annotations

import csv
import gzip
import json
import re
import sys
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from rlhf import cli
from rlhf.data.chat import plain_template
from rlhf.data.collate import encode_prompt, encode_prompt_response, sft_batch
from rlhf.data.loader import load_mixture, load_pairs, load_prompt_table, load_prompts, load_sft
from rlhf.data.tokenizer import ByteTokenizer, HFTokenizer
from rlhf.data.validate import format_report, validate_file
from rlhf.errors import UserError
from test_cli import check_one_line_error, run_main
from tiny_hf import gpt2_dir
from tiny_runs import TINY_SFT

TOK = ByteTokenizer()
HH = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "hh-rlhf-harmless" / "pairs.jsonl.gz"


def msg(role: str, content: str) -> dict:
    return {"role": role, "content": content}


SYS, U1, A1, U2, A2 = (
    msg("system", "Be brief."),
    msg("user", "What is 2+2?"),
    msg("assistant", "4."),
    msg("user", "And 3+3?"),
    msg("assistant", "6."),
)
ROWS = {
    "messages": [{"messages": [SYS, U1, A1, U2, A2]}, {"messages": [U1, A1]}, {"messages": [U2, A2]}],
    "chat_sft": [{"prompt": [U1], "completion": [A1]}, {"prompt": [SYS, U2], "completion": [A2]}],
    "chat_pairs": [
        {"prompt": [U1], "chosen": [A1], "rejected": [msg("assistant", "5.")]},
        {"prompt": [SYS, U2], "chosen": [A2], "rejected": [msg("assistant", "7.")]},
    ],
    "chat_pairs_implicit": [
        {"chosen": [U1, A1], "rejected": [U1, msg("assistant", "5.")]},
        {"chosen": [SYS, U1, A1, U2, A2], "rejected": [SYS, U1, A1, U2, msg("assistant", "7.")]},
    ],
    "chat_prompts": [{"prompt": [U1], "answer": "4"}, {"prompt": [SYS, U2], "answer": "6"}],
    "pairs": [
        {"prompt": "Q: 2+2?\nA:", "chosen": " 4.", "rejected": " 5."},
        {"prompt": "Q: 3+3?\nA:", "chosen": " 6.", "rejected": " 7."},
    ],
    "sft": [{"prompt": "Q: 2+2?\nA:", "response": " 4."}, {"prompt": "Q: 3+3?\nA:", "response": " 6."}],
    "prompts": [{"prompt": "Q: 2+2?\nA:", "answer": "4"}, {"prompt": "Q: 3+3?\nA:", "answer": "6"}],
}
KIND = {  # what a stage loads from each schema
    "messages": "sft",
    "chat_sft": "sft",
    "sft": "sft",
    "chat_pairs": "pairs",
    "chat_pairs_implicit": "pairs",
    "pairs": "pairs",
    "chat_prompts": "prompts",
    "prompts": "prompts",
}
CONTAINERS = ["jsonl", "json", "csv", "parquet", "save_to_disk", "dataset_dict", "shards"]


def write_parquet(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def write_container(directory: Path, container: str, rows: list[dict]) -> Path:
    """`rows` stored as `container`; returns what a user would pass to --data / `data validate`."""
    if container == "jsonl":
        path = directory / "d.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif container == "json":
        path = directory / "d.json"
        path.write_text(json.dumps(rows, indent=1))
    elif container == "csv":  # conversations as JSON text, declared by the column name
        path = directory / "d.csv"
        names = list(rows[0])
        with open(path, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow([n + ":json" if isinstance(rows[0][n], list) else n for n in names])
            w.writerows([[json.dumps(r[n]) if isinstance(r[n], list) else r[n] for n in names] for r in rows])
    elif container == "parquet":
        path = write_parquet(directory / "d.parquet", rows)
    elif container == "save_to_disk":
        path = directory / "saved"
        datasets.Dataset.from_list(rows).save_to_disk(str(path))
    elif container == "dataset_dict":  # train = the rows, test = a decoy that must not be read by default
        path = directory / "saved_dict"
        decoy = datasets.Dataset.from_list(rows[:1])
        datasets.DatasetDict({"train": datasets.Dataset.from_list(rows), "test": decoy}).save_to_disk(
            str(path)
        )
    else:  # a cloned hub dataset repo: train shards (read, in order), a test shard (not read), and metadata
        path = directory / "repo"
        write_parquet(path / "data" / "train-00000-of-00002.parquet", rows[:1])
        write_parquet(path / "data" / "train-00001-of-00002.parquet", rows[1:])
        write_parquet(path / "data" / "test-00000-of-00001.parquet", rows[:1])
        (path / "README.md").write_text("---\nlicense: mit\n---\n")
        (path / ".gitattributes").write_text("*.parquet filter=lfs\n")
    return path


def load(kind: str, path: Path, split: str = "") -> list:
    """The examples a stage of `kind` reads, without their locations (those differ between containers)."""
    if kind == "pairs":
        return [(p.prompt, p.chosen, p.rejected) for p in load_pairs(path, split=split)]
    if kind == "sft":
        return [(e.prompt, e.response) for e in load_sft(path, split=split)]
    return load_prompts(path, split=split)


@pytest.mark.parametrize("container", CONTAINERS)
@pytest.mark.parametrize("schema", list(ROWS))
def test_every_schema_in_every_container(tmp_path: Path, schema: str, container: str) -> None:
    rows = ROWS[schema]
    path = write_container(tmp_path, container, rows)
    report = validate_file(path, TOK)
    assert report["schema"] == schema and report["rows"] == len(rows)
    assert report["conversational"] == isinstance(rows[0].get("prompt", rows[0].get("chosen", [])), list) or (
        schema == "messages"
    )
    assert report["shards"] == (2 if container == "shards" else 1)
    assert report["example"]["prompt"]  # what the model reads is shown
    # Every container gives exactly what the JSONL file gives, and every schema gives prompts for RL.
    reference = write_container(tmp_path, "jsonl", rows)
    assert load(KIND[schema], path) == load(KIND[schema], reference)
    assert load_prompts(path) == load_prompts(reference)


@pytest.mark.parametrize("container", ["dataset_dict", "shards"])
def test_split_picks_the_test_part(tmp_path: Path, container: str) -> None:
    path = write_container(tmp_path, container, ROWS["sft"])
    assert validate_file(path, TOK, split="test")["rows"] == 1
    assert load("sft", path, split="test") == load("sft", path)[:1]


def test_conversations_render_through_the_plain_template_once() -> None:
    # The documented plain template is the HH transcript layout: the same conversation as text is the same ids.
    assert plain_template([U1, A1], add_generation_prompt=False) == "\n\nHuman: What is 2+2?\n\nAssistant: 4."
    assert plain_template([SYS, U1], add_generation_prompt=True) == (
        "\n\nSystem: Be brief.\n\nHuman: What is 2+2?\n\nAssistant:"
    )
    as_messages = encode_prompt_response(TOK, [U1], [A1], 256)
    as_text = encode_prompt_response(TOK, "\n\nHuman: What is 2+2?\n\nAssistant:", " 4.", 256)
    assert as_messages == as_text
    # A text completion to a conversational prompt is the assistant's answer (TRL's prompt-completion rule).
    assert encode_prompt_response(TOK, [U1], "4.", 256).ids == as_text.ids
    assert encode_prompt(TOK, [U1], 256)[0] == as_text.ids[: as_text.prompt_len]


def test_multi_turn_loss_mask_by_hand() -> None:
    # [SYS, U1] is the prompt; the response is A1, U2, A2. With the plain template and byte tokens:
    #   prompt  "\n\nSystem: Be brief.\n\nHuman: What is 2+2?\n\nAssistant:"  2+8+9 + 2+7+12 + 12 = 52 bytes
    #   A1      " 4."                                                        3 bytes, trained
    #   U2      "\n\nHuman: And 3+3?\n\nAssistant:"                          2+7+8 + 12 = 29 bytes, NOT trained
    #   A2      " 6."                                                        3 bytes, trained
    #   eos                                                                   trained
    # ids: bos at 0, prompt 1..52, A1 53..55, U2 56..84, A2 85..87, eos 88 (89 ids).
    # Position t predicts id t+1, so the loss sits at positions 52..54 (A1), 84..87 (A2 and eos).
    e = encode_prompt_response(TOK, [SYS, U1], [A1, U2, A2], 256)
    assert len(e.ids) == 89 and e.prompt_len == 53 and e.untrained == ((56, 85),)
    mask = sft_batch([e], TOK.pad_id)["loss_mask"][0]
    assert torch.nonzero(mask).flatten().tolist() == [52, 53, 54, 84, 85, 86, 87]
    ids = torch.tensor(e.ids)
    assert TOK.decode(ids[1:][mask[:-1]]) == " 4. 6."  # the system and user turns carry no loss
    # The messages schema trains every assistant turn: the row loads as (turns before the first answer, the rest).
    assert e == encode_prompt_response(TOK, *_sft_parts({"messages": [SYS, U1, A1, U2, A2]}), 256)


def _sft_parts(row: dict, tmp=Path("/tmp")) -> tuple:
    path = tmp / f"rlhf-test-{id(row)}.jsonl"
    path.write_text(json.dumps(row) + "\n")
    (example,) = load_sft(path)
    path.unlink()
    return example.prompt, example.response


def test_truncation_keeps_the_last_answer_and_drops_the_oldest_turns() -> None:
    # 89 ids do not fit in 34: bos and eos stay, and the 32 newest body ids are U2 (29) and A2 (3); the prompt and
    # A1 are dropped whole, and U2 is still not trained.
    full = encode_prompt_response(TOK, [SYS, U1], [A1, U2, A2], 256)
    cut = encode_prompt_response(TOK, [SYS, U1], [A1, U2, A2], 34)
    assert cut.truncated and len(cut.ids) == 34 and cut.ids[0] == TOK.bos_id
    assert cut.ids[1:] == full.ids[-33:] and cut.prompt_len == 1 and cut.untrained == ((1, 30),)
    mask = sft_batch([cut], TOK.pad_id)["loss_mask"][0]
    assert TOK.decode(torch.tensor(cut.ids)[1:][mask[:-1]]) == " 6."


CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|endoftext|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def test_a_chat_template_is_applied_exactly_once_and_trains_only_answers(tmp_path: Path) -> None:
    tok = HFTokenizer(str(gpt2_dir(tmp_path / "chatml", chat_template=CHATML)))
    e = encode_prompt_response(tok, [U1], [A1, U2, A2], 512)
    text = tok.tok.decode(e.ids)
    whole = tok.tok.apply_chat_template([U1, A1, U2, A2], tokenize=False)
    assert text == whole.rstrip()  # one rendering of the whole conversation, nothing doubled
    assert text.count("<|im_start|>user") == 2 and e.ids[-1] == tok.eos_id and e.ids[-2] != tok.eos_id
    mask = sft_batch([e], tok.pad_id)["loss_mask"][0]
    trained = tok.tok.decode(torch.tensor(e.ids)[1:][mask[:-1]])
    assert trained == "4.<|endoftext|>6.<|endoftext|>"  # each answer and its end-of-turn token, nothing else


# ----------------------------------------------------------------------------------------------- the stages
REWARD_FN = """
from pathlib import Path

def answer_check(prompts, completions, answer, **_):
    Path(__file__).with_name("called").touch()
    # TRL's convention: conversational prompts and completions arrive as messages, other columns as lists.
    assert isinstance(prompts[0], list) and prompts[0][-1]["role"] == "user", prompts[0]
    assert completions[0][0]["role"] == "assistant" and isinstance(completions[0][0]["content"], str)
    assert set(answer) <= {"4", "6"}, answer
    return [float(c[0]["content"].strip() == a) for c, a in zip(completions, answer)]
"""


def test_every_stage_reads_conversations(tiny_sft, tiny_reward, tmp_path: Path) -> None:
    sft_data = write_container(tmp_path, "parquet", ROWS["messages"] * 8)
    sft_out = tmp_path / "sft"
    cli.run(["sft", *TINY_SFT, "--max-steps", "2", "--data", str(sft_data), "--out", str(sft_out)])
    assert (sft_out / "model.safetensors").exists()

    saved = write_container(tmp_path, "save_to_disk", ROWS["chat_pairs_implicit"] * 8)
    reward_out = tmp_path / "reward"
    cli.run(["reward", "--init", str(tiny_sft), "--data", str(saved), "--max-steps", "2", "--no-progress",
             "--threads", "1", "--max-length", "64", "--out", str(reward_out)])  # fmt: skip
    assert (reward_out / "model.safetensors").exists()
    ev = cli.run(["reward", "eval", "--checkpoint", str(reward_out), "--data", str(saved), "--no-progress",
                  "--threads", "1", "--out", str(tmp_path / "eval")])  # fmt: skip
    assert ev["n_pairs"] == 16

    repo = write_container(tmp_path, "shards", ROWS["chat_pairs"] * 8)
    dpo_out = tmp_path / "dpo"
    cli.run(["dpo", "--sft", str(tiny_sft), "--data", str(repo), "--max-steps", "2", "--no-progress",
             "--threads", "1", "--max-length", "64", "--out", str(dpo_out)])  # fmt: skip
    assert (dpo_out / "model.safetensors").exists()

    prompts = write_container(tmp_path, "parquet", ROWS["chat_prompts"] * 4)
    (tmp_path / "fns.py").write_text(REWARD_FN)
    grpo_out = tmp_path / "grpo"
    cli.run(["grpo", "--sft", str(tiny_sft), "--reward", str(tmp_path / "absent"), "--prompts", str(prompts),
             "--reward-fn", f"{tmp_path / 'fns.py'}:answer_check", "--episodes", "8", "--rollout-batch", "4",
             "--samples-per-prompt", "2", "--response-length", "4", "--no-progress", "--threads", "1",
             "--out", str(grpo_out)])  # fmt: skip
    assert (grpo_out / "metrics.jsonl").read_text().strip() and (tmp_path / "called").exists()

    cmp = cli.run(["compare", "--sft", str(tiny_sft), "--policy", str(dpo_out), "--reward", str(tiny_reward),
                   "--prompts", str(prompts), "--samples-per-prompt", "1", "--response-length", "4", "--no-progress",
                   "--threads", "1", "--bootstrap", "50", "--out", str(tmp_path / "compare")])  # fmt: skip
    assert cmp["n_prompts"] == 8


# ------------------------------------------------------------------------------------------------ mixtures
def test_weights_sample_each_file_at_its_share_and_never_leak_into_eval(tmp_path: Path) -> None:
    a = tmp_path / "a.jsonl"
    b = tmp_path / "b.jsonl"
    a.write_text("".join(json.dumps({"prompt": f"a{i}", "response": " x"}) + "\n" for i in range(10)))
    b.write_text("".join(json.dumps({"prompt": f"b{i}", "response": " y"}) + "\n" for i in range(10)))
    train, held = load_mixture([a, b], "sft")
    assert [e.prompt for e in train] == [f"a{i}" for i in range(10)] + [
        f"b{i}" for i in range(10)
    ] and not held
    # Weights 3:1 over 20 examples: a gives 15 (all 10 once + 5 more), b gives 5 of its 10.
    train, _ = load_mixture([a, b], "sft", weights=[3, 1], seed=1)
    names = [e.prompt for e in train]
    assert (
        len(names) == 20
        and sum(n[0] == "a" for n in names) == 15
        and len({n for n in names if n[0] == "a"}) == 10
    )
    assert len({n for n in names if n[0] == "b"}) == 5
    # Held-out examples are chosen per file before weighting, so no copy of one is trained on.
    train, held = load_mixture([a, b], "sft", weights=[3, 1], seed=1, eval_fraction=0.2)
    assert len(held) == 4 and not {e.prompt for e in held} & {e.prompt for e in train}


def test_mixing_text_with_conversations_names_both_files(tmp_path: Path) -> None:
    text = write_container(tmp_path, "jsonl", ROWS["sft"])
    chat = write_container(tmp_path, "parquet", ROWS["messages"])
    with pytest.raises(UserError, match=re.escape(f"{text} holds plain text") + ".*" + re.escape(str(chat))):
        load_mixture([text, chat], "sft")
    prompts = (
        write_container(tmp_path / "p", "jsonl", ROWS["prompts"]) if (tmp_path / "p").mkdir() is None else 0
    )
    with pytest.raises(UserError, match=re.escape(str(prompts)) + ".*" + re.escape(str(text))):
        load_mixture([text, prompts], "sft")


# -------------------------------------------------------------------------------------------- HH as Parquet
def _to_messages(transcript: str) -> list[dict]:
    parts = re.split(r"\n\n(Human|Assistant): ", transcript)
    assert parts[0] == ""
    return [
        msg("user" if who == "Human" else "assistant", text) for who, text in zip(parts[1::2], parts[2::2])
    ]


@pytest.mark.skipif(not HH.exists(), reason="../shared/data is beside the project in CI")
def test_hh_pairs_as_conversational_parquet_give_the_same_pairs_and_prompts(tmp_path: Path) -> None:
    rows = [json.loads(line) for line in gzip.open(HH, "rt")]
    conv = [{"chosen": _to_messages(r["chosen"]), "rejected": _to_messages(r["rejected"])} for r in rows]
    path = write_parquet(tmp_path / "hh.parquet", conv)
    text_report, conv_report = validate_file(HH, TOK), validate_file(path, TOK)
    assert text_report["n_pairs"] == conv_report["n_pairs"] == 1812
    assert conv_report["schema"] == "chat_pairs_implicit" and text_report["schema"] == "pairs_implicit"
    # The same prompts, token for token, as the model reads them (plain template = HH layout).
    text_prompts = [encode_prompt(TOK, p, 1 << 20)[0] for p in load_prompts(HH)]
    conv_prompts = [encode_prompt(TOK, p, 1 << 20)[0] for p in load_prompts(path)]
    assert text_prompts == conv_prompts
    assert conv_report["tokens"]["prompt"] == text_report["tokens"]["prompt"]


# ----------------------------------------------------------------------------------------------- bad input
def _jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


GOOD = {"messages": [U1, A1]}
# name -> (file name, content: bytes | rows for Parquet | "dir-empty", the location the error must name)
BAD = {
    "message-without-role": ("a.parquet", [GOOD, {"messages": [{"content": "hi"}, A1]}], 1),
    "message-without-content": ("b.jsonl", _jsonl([GOOD, GOOD, {"messages": [{"role": "user"}, A1]}]), 3),
    "sharegpt-keys": ("c.jsonl", _jsonl([{"messages": [{"from": "human", "value": "hi"}]}]), 1),
    "unknown-role": ("d.jsonl", _jsonl([GOOD, {"messages": [msg("gpt", "hi"), A1]}]), 2),
    "content-not-a-string": (
        "e.jsonl",
        _jsonl([GOOD, {"messages": [{"role": "user", "content": ["hi"]}, A1]}]),
        2,
    ),
    "empty-conversation": ("f.jsonl", _jsonl([GOOD, {"messages": []}]), 2),
    "no-assistant-turn": ("g.parquet", [GOOD, GOOD, {"messages": [SYS, U1]}], 2),
    "text-where-messages": ("h.jsonl", _jsonl([GOOD, {"messages": "Human: hi"}]), 2),
    "implicit-no-shared-prefix": ("i.jsonl", _jsonl([{"chosen": [U1, A1], "rejected": [U2, A2]}]), 1),
    "chosen-ends-with-user": ("j.jsonl", _jsonl([{"prompt": [U1], "chosen": [A1, U2], "rejected": [A1]}]), 1),
    "rejected-ends-with-user": ("k.parquet", [{"chosen": [U1, A1], "rejected": [U1, A1, U2]}], 0),
    "parquet-not-parquet": ("l.parquet", _jsonl([GOOD]), None),
    "parquet-missing-column": ("m.parquet", [{"prompt": "p", "chosen": "c"}], 0),
    "csv-undeclared-json": ("n.csv", b'messages\n"[{""role"": ""user"", ""content"": ""hi""}]"\n', 2),
    "directory-without-shards": ("repo", "dir-empty", None),
}


def write_bad(directory: Path, name: str) -> str:
    fname, content, _ = BAD[name]
    if content == "dir-empty":
        (directory / fname).mkdir()
        (directory / fname / "README.md").write_text("# no data here\n")
    elif isinstance(content, list):
        write_parquet(directory / fname, content)
    else:
        (directory / fname).write_bytes(content)
    return fname


@pytest.mark.parametrize("case", list(BAD))
def test_bad_conversational_data_gives_one_line(case, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    fname = write_bad(tmp_path, case)
    code, _, err = run_main(["data", "validate", fname, "--out", "v"], capsys)
    check_one_line_error(code, err, fname, BAD[case][2])
    assert code == 2


def test_sft_on_bad_data_writes_nothing(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    fname = write_bad(tmp_path, "no-assistant-turn")
    code, _, err = run_main(
        ["sft", "--data", fname, "--out", "s", "--no-progress", "--max-steps", "1"], capsys
    )
    check_one_line_error(code, err, fname, 2)
    assert not (tmp_path / "s" / "model.safetensors").exists()


@pytest.mark.parametrize("weights", [["1"], ["1", "0"], ["1", "-2"], ["1", "nan"]])
def test_bad_data_weights_are_one_line(weights, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    for name in ("a.jsonl", "b.jsonl"):
        (tmp_path / name).write_bytes(_jsonl(ROWS["sft"]))
    argv = ["sft", "--data", "a.jsonl", "b.jsonl", "--data-weights", *weights, "--out", "s", "--no-progress"]
    code, _, err = run_main(argv, capsys)
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("error: --data-weights "), err
    assert not (tmp_path / "s" / "model.safetensors").exists()


def test_parquet_without_the_data_extra_says_which_extra(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    write_parquet(tmp_path / "d.parquet", ROWS["messages"])
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # `import pyarrow` now raises ImportError
    code, _, err = run_main(["data", "validate", "d.parquet", "--out", "v"], capsys)
    check_one_line_error(code, err, "d.parquet", None)
    assert "pip install 'rlhf[data]'" in err


def test_validate_prints_the_rendered_example(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    write_container(tmp_path, "parquet", ROWS["messages"])
    code, out, err = run_main(["data", "validate", "d.parquet", "--out", "v"], capsys)
    assert code == 0, err
    assert "schema:    messages - conversational" in out
    assert "prompt:   '\\n\\nSystem: Be brief.\\n\\nHuman: What is 2+2?\\n\\nAssistant:'" in out
    assert "(no loss on '\\n\\nHuman: And 3+3?\\n\\nAssistant:')" in out
    report = json.loads((tmp_path / "v" / "summary.json").read_text())
    assert report["example"]["untrained_in_response"] == ["\n\nHuman: And 3+3?\n\nAssistant:"]
    assert format_report(report) in out


def test_prompt_table_passes_other_columns_of_conversational_prompts(tmp_path: Path) -> None:
    path = write_container(tmp_path, "parquet", ROWS["chat_prompts"])
    prompts, columns = load_prompt_table(path)
    assert prompts == [[U1], [SYS, U2]] and columns == {"answer": ["4", "6"]}
