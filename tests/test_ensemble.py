"""Reward-model ensembles (issue 22 item 2): `rlhf reward --ensemble K` writes one run directory that `reward eval`,
PPO and GRPO read; independent members and a shared trunk; K = 1 unchanged; bad options refused in one line.
(The reductions themselves are checked by hand in tests/rl/test_ensemble_reduce.py.)"""

from __future__ import annotations

import json
import shutil
import typing

import pytest
import torch
from safetensors.torch import load_file

from rlhf import cli
from rlhf import config as C
from rlhf.data.collate import pack_pairs, unpack_pairs
from rlhf.metrics import read_metrics
from rlhf.models.build import load_reward_ensemble, load_scalar
from rlhf.models.gpt import GPT, GPTConfig
from rlhf.models.heads import RewardEnsemble, ScalarModel
from rlhf.rl import ENSEMBLE_REDUCTIONS
from tiny_runs import TINY_REWARD

K = 3
EVAL = ["--task.n-eval", "40", "--no-progress", "--threads", "1"]
PPO = [
    "--episodes", "8", "--rollout-batch", "8", "--mini-batches", "2", "--ppo-epochs", "1",
    "--response-length", "8", "--task.n-train", "64", "--no-progress", "--threads", "1",
]  # fmt: skip


@pytest.fixture(scope="module")
def ensemble(tiny_sft, tmp_path_factory):
    """K independent members from the tiny SFT checkpoint, in one run directory."""
    out = tmp_path_factory.mktemp("ens") / "reward"
    summary = cli.run(
        ["reward", "--init", str(tiny_sft), *TINY_REWARD, "--ensemble", str(K), "--out", str(out)]
    )
    return out, summary


@pytest.fixture(scope="module")
def shared(tiny_sft, tmp_path_factory):
    """K heads on one shared trunk."""
    out = tmp_path_factory.mktemp("ens") / "shared"
    argv = ["reward", "--init", str(tiny_sft), *TINY_REWARD, "--ensemble", str(K), "--ensemble-shared-trunk"]
    summary = cli.run([*argv, "--out", str(out)])
    return out, summary


def _eval(checkpoint, out, *extra) -> dict:
    return cli.run(["reward", "eval", "--checkpoint", str(checkpoint), *EVAL, "--out", str(out), *extra])


# ------------------------------------------------------------------------------------------------ K heads
@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_k_heads_score_as_k_one_head_models(pooling):
    """Head k of a K-head model scores exactly as a one-head model with head k's weights, packed or not."""
    torch.manual_seed(0)
    trunk = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=32))
    many = ScalarModel(trunk, pooling, n_heads=3).eval()
    pad = 256
    chosen, rejected = [[257, 5, 6, 7, 258], [257, 9, 258]], [[257, 5, 8, 258], [257, 9, 10, 11, 258]]
    ids, segments = pack_pairs(chosen, rejected, pad)
    rows, mask = unpack_pairs(ids, segments, pad)
    with torch.no_grad():
        c, r = many.score_pairs(ids, segments, pad)  # packed: (K, B) each
        s = many.score(rows, mask)  # (K, 2B)
        assert c.shape == r.shape == (3, 2) and s.shape == (3, 4)
        for k in range(3):
            one = ScalarModel(trunk, pooling).eval()
            one.head.weight.copy_(many.head.weight[k : k + 1])
            one.head.bias.copy_(many.head.bias[k : k + 1])
            oc, orr = one.score_pairs(ids, segments, pad)
            torch.testing.assert_close(c[k], oc)
            torch.testing.assert_close(r[k], orr)
            torch.testing.assert_close(s[k], one.score(rows, mask))
            torch.testing.assert_close(s[k], torch.cat([oc, orr]), atol=1e-5, rtol=1e-5)  # packed = two rows
        ens = RewardEnsemble([many, one])  # 3 heads + 1 model: K = 4, in that order
        assert ens.size == 4 and ens.score(rows, mask).shape == (4, 4)
        torch.testing.assert_close(ens.score(rows, mask)[3], one.score(rows, mask))


# ------------------------------------------------------------------------------------------------ training
def test_independent_members_are_normal_reward_checkpoints(ensemble):
    out, summary = ensemble
    config = json.loads((out / "config.json").read_text())
    spec = config["ensemble"]
    assert spec["size"] == K and spec["shared_trunk"] is False
    assert spec["members"] == [f"member-{k}" for k in range(K)]
    assert not (out / "model.safetensors").exists()  # the weights live in the members only
    weights = []
    for k, name in enumerate(spec["members"]):
        member = json.loads((out / name / "config.json").read_text())
        assert member["run_config"]["seed"] == k  # seed + k
        assert member["reward_norm"] == spec["reward_norm"][k]  # each member keeps its own statistics
        assert "ensemble" not in member  # a plain reward checkpoint: every tool that reads one reads a member
        weights.append(load_file(str(out / name / "model.safetensors"))["head.weight"])
    # Different seeds and resamples: no two members alike.
    assert not torch.equal(weights[0], weights[1]) and not torch.equal(weights[1], weights[2])
    # The ensemble's summary: each member, the ensemble (mean), the disagreement.
    assert len(summary["members"]) == K and 0 <= summary["accuracy"] <= 1
    assert summary["ensemble"]["reduce"] == "mean" and summary["ensemble"]["disagreement"] > 0
    # load_scalar (a value model's start, export) reads member 0.
    model, _, cfg0 = load_scalar(out)
    assert (
        torch.equal(model.head.weight.detach(), weights[0]) and cfg0["reward_norm"] == spec["reward_norm"][0]
    )


def test_resume_keeps_finished_members(ensemble, tmp_path):
    src, summary = ensemble
    out = tmp_path / "reward"
    shutil.copytree(src, out)
    before = {k: (out / f"member-{k}" / "model.safetensors").read_bytes() for k in range(K)}
    again = cli.run(["reward", *TINY_REWARD, "--ensemble", str(K), "--resume", "--out", str(out)])
    assert all((out / f"member-{k}" / "model.safetensors").read_bytes() == before[k] for k in range(K))
    assert again["members"] == summary["members"] and again["accuracy"] == summary["accuracy"]


def test_shared_trunk_has_one_checkpoint_with_k_heads(shared):
    out, summary = shared
    config = json.loads((out / "config.json").read_text())
    assert config["ensemble"]["size"] == K and config["ensemble"]["shared_trunk"] is True
    state = load_file(str(out / "model.safetensors"))
    assert state["head.weight"].shape[0] == K and state["head.bias"].shape == (K,)
    assert len(config["ensemble"]["reward_norm"]) == K
    assert config["reward_norm"] == config["ensemble"]["reward_norm"][0]
    assert summary["ensemble"]["size"] == K and len(summary["members"]) == K
    # Heads fitted to different bootstrap weights from different initialisations differ.
    assert not torch.equal(state["head.weight"][0], state["head.weight"][1])
    model, _, _ = load_scalar(out)  # head 0 on the trunk, as a one-head model
    assert model.n_heads == 1 and torch.equal(model.head.weight.detach(), state["head.weight"][:1])


def test_a_plain_reward_model_reads_as_an_ensemble_of_one(tiny_reward):
    config = json.loads((tiny_reward / "config.json").read_text())
    assert "ensemble" not in config  # K = 1 (the default) writes what it always wrote
    ens, tok, _, norms = load_reward_ensemble(tiny_reward)
    single, _, _ = load_scalar(tiny_reward)
    assert ens.size == 1 and norms == [config["reward_norm"]]
    ids = torch.tensor([[tok.bos_id, 65, 66, tok.eos_id]])
    mask = torch.ones_like(ids, dtype=torch.bool)
    with torch.no_grad():
        assert torch.equal(ens.score(ids, mask), single.score(ids, mask).unsqueeze(0))  # (1, B)


# ------------------------------------------------------------------------------------------------ reward eval
def test_reward_eval_reports_members_ensemble_and_disagreement(ensemble, tmp_path):
    out, _ = ensemble
    ev = _eval(out, tmp_path / "ev")
    assert len(ev["members"]) == K and "accuracy" in ev and ev["ensemble"]["disagreement"] > 0
    assert 0 <= ev["ensemble"]["split_pairs"] <= 1
    # Each member's figures are that member's own: the same as `reward eval` of its directory alone.
    for k in range(K):
        alone = _eval(out / f"member-{k}", tmp_path / f"m{k}")
        assert ev["members"][k]["accuracy"] == alone["accuracy"]
        assert ev["members"][k]["margin"] == pytest.approx(alone["margin"], abs=1e-6)
    assert ev["ensemble"]["member_accuracy_mean"] == pytest.approx(
        sum(m["accuracy"] for m in ev["members"]) / K
    )
    saved = json.loads((tmp_path / "ev" / "summary.json").read_text())
    assert saved["ensemble"]["size"] == K and len(saved["members"]) == K
    # Another reduction changes the ensemble's scores, not the members'.
    worst = _eval(out, tmp_path / "ev-min", "--ensemble-reduce", "min")
    assert worst["ensemble"]["reduce"] == "min" and worst["members"] == ev["members"]
    assert worst["reward_mean"] < ev["reward_mean"]  # the min of normalised scores lies below their mean


def test_reward_eval_reads_a_shared_trunk(shared, tmp_path):
    out, _ = shared
    ev = _eval(out, tmp_path / "ev")
    assert len(ev["members"]) == K and ev["ensemble"]["disagreement"] > 0


# ------------------------------------------------------------------------------------------------ PPO / GRPO
@pytest.fixture(scope="module")
def ppo_runs(tiny_sft, ensemble, tmp_path_factory):
    """One PPO update against the ensemble with each reduction (same seed: the same rollouts)."""
    out, _ = ensemble
    base = tmp_path_factory.mktemp("ppo")
    runs = {}
    for how in ENSEMBLE_REDUCTIONS:
        d = base / how
        argv = ["ppo", "--sft", str(tiny_sft), "--reward", str(out), *PPO, "--ensemble-reduce", how]
        cli.run([*argv, "--ensemble-lambda", "0.5", "--out", str(d)])
        runs[how] = read_metrics(d / "metrics.jsonl")[0]
    return runs


def test_ppo_reads_the_ensemble_with_each_reduction(ppo_runs):
    mean, worst, mmstd = ppo_runs["mean"], ppo_runs["min"], ppo_runs["mean-minus-std"]
    for row in ppo_runs.values():
        assert row["objective/ensemble_std"] > 0
    # The same rollouts (same seed), so the same disagreement; the score is each row's reduction, averaged:
    # mean over the batch of (mean - 0.5 std) = mean of the means - 0.5 x mean of the stds.
    assert worst["objective/ensemble_std"] == pytest.approx(mean["objective/ensemble_std"])
    assert mmstd["objective/scores"] == pytest.approx(
        mean["objective/scores"] - 0.5 * mean["objective/ensemble_std"], abs=1e-5
    )
    assert worst["objective/scores"] < mean["objective/scores"]  # min < mean wherever the members disagree


def test_grpo_reads_a_shared_trunk(tiny_sft, shared, tmp_path):
    out, _ = shared
    argv = ["grpo", "--sft", str(tiny_sft), "--reward", str(out), *PPO, "--rollout-batch", "4"]
    cli.run([*argv, "--samples-per-prompt", "2", "--ensemble-reduce", "min", "--out", str(tmp_path / "g")])
    row = read_metrics(tmp_path / "g" / "metrics.jsonl")[0]
    assert row["objective/ensemble_std"] > 0


def test_a_single_reward_model_logs_no_ensemble_metric(tiny_sft, tiny_reward, tmp_path):
    cli.run(["ppo", "--sft", str(tiny_sft), "--reward", str(tiny_reward), *PPO, "--out", str(tmp_path / "p")])
    assert "objective/ensemble_std" not in read_metrics(tmp_path / "p" / "metrics.jsonl")[0]


# ------------------------------------------------------------------------------------------------ options
def test_reductions_match_the_option_choices():
    assert typing.get_args(C.EnsembleReduce) == ENSEMBLE_REDUCTIONS


@pytest.mark.parametrize(
    "argv, says",
    [
        (["reward", "--ensemble", "0"], "--ensemble must be an integer in [1, 256], got 0"),
        (["reward", "--ensemble-shared-trunk"], "--ensemble-shared-trunk needs --ensemble K with K >= 2"),
        (["ppo", "--ensemble-reduce", "median"], "--ensemble-reduce must be one of"),
        (["ppo", "--ensemble-lambda", "-1"], "--ensemble-lambda must be a finite number in [0, 1000]"),
        (["reward", "eval", "--ensemble-reduce", "max"], "--ensemble-reduce must be one of"),
    ],
)
def test_bad_ensemble_options_give_one_line_errors(argv, says, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        cli.main([*argv, "--out", "o", "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert e.value.code != 0 and len(err.splitlines()) == 1 and err.startswith("error: "), err
    assert says in err, err


# ------------------------------------------------------------------------------------------------ compare
def test_compare_reads_the_ensemble_reduced_score_as_its_proxy(tiny_sft, ensemble, tmp_path):
    out, _ = ensemble
    base = ["compare", "--sft", str(tiny_sft), "--policy", str(tiny_sft), "--n-prompts", "12"]
    base += ["--samples-per-prompt", "1", "--response-length", "8", "--no-progress", "--threads", "1"]

    def compare(reward, name, *extra):
        return cli.run([*base, "--reward", str(reward), "--out", str(tmp_path / name), *extra])

    mean = compare(out, "mean")
    worst = compare(out, "min", "--ensemble-reduce", "min")
    alone = [compare(out / f"member-{k}", f"m{k}") for k in range(K)]
    # The same seed samples the same responses every time; each member alone scores them with its own statistics,
    # and the mean reduction is linear: mean over samples of (1/K sum_k s_k) = 1/K sum_k (mean over samples of s_k).
    for side in ("proxy_sft", "proxy_ppo"):
        assert mean[side] == pytest.approx(sum(a[side] for a in alone) / K, abs=1e-5)
        assert (
            worst[side] < mean[side]
        )  # min_k s_k <= mean_k s_k on every sample, strictly where members differ
    assert mean[side] != pytest.approx(alone[0][side], abs=1e-4)  # not member 0 alone (what load_scalar read)
    e = mean["ensemble"]
    assert e["size"] == K and e["reduce"] == "mean" and e["std_sft"] > 0 and e["std_ppo"] > 0
    assert worst["ensemble"]["reduce"] == "min" and worst["gold_sft"] == mean["gold_sft"]  # same samples
    assert "ensemble" not in alone[0]  # a single reward model: nothing about ensembles
