"""Experiments (`rlhf experiment <name>`): the parts by hand (pair labelling by one judge part, multi-reward
weighting, the over-optimisation curve), summary schemas on tiny settings, the report of an experiment directory
(in a real headless browser where one is installed), and - marked slow - each `--quick` run's expected direction.
"""

from __future__ import annotations

import json
import re

import pytest

from browser import images_in_browser
from rlhf import cli
from rlhf.eval.report import build_report
from rlhf.experiments.common import line_plot, tail_mean
from rlhf.experiments.overoptimization import binned_curve, peak_of
from rlhf.metrics import read_metrics
from rlhf.tasks import InstructTask
from rlhf.tasks.judge import components


# ------------------------------------------------------------------------------------------------ by hand
@pytest.mark.parametrize("part", ["helpful", "concise"])
def test_label_by_labels_pairs_by_that_part(part):
    pairs = InstructTask(seed=3, label_noise=0.0, label_by=part).preference_pairs(200)
    for p in pairs:
        c, r = components(p["prompt"], p["chosen"])[part], components(p["prompt"], p["rejected"])[part]
        assert c > r and p["clean_chosen_is_better"]
    # Labels by a part disagree with the whole score on some pairs (else the experiment would be pointless).
    assert any(p["gold_chosen"] < p["gold_rejected"] for p in pairs)


def test_label_by_score_is_the_default_labelling():
    default = InstructTask(seed=5).preference_pairs(50)
    assert InstructTask(seed=5, label_by="score").preference_pairs(50) == default
    with pytest.raises(ValueError, match="label_by"):
        InstructTask(label_by="length")


def test_concise_labels_prefer_short_and_helpful_labels_prefer_padding_over_concise():
    prompt = "Q: Repeat the word: kel\nA:"
    task = InstructTask()
    concise, padded = task.response(prompt, "concise"), task.response(prompt, "padded")
    # concise part: brevity alone; helpful part: a small bonus for length (the verbosity trap), 0.2*(1-concise).
    assert components(prompt, concise)["concise"] > components(prompt, padded)["concise"]
    assert components(prompt, padded)["helpful"] > components(prompt, concise)["helpful"]


def test_binned_curve_and_peak_by_hand():
    # 8 updates, 4 bins of 2: gold rises then falls; proxy keeps rising; KL 0,1,4,9,... so sqrt KL = 0..7.
    gold = [0.0, 0.2, 0.4, 0.6, 0.5, 0.3, 0.1, -0.1]
    rows = [
        {
            "objective/kl": float(i * i),
            "gold/score": g,
            "objective/scores": i / 2,
            "completions/mean_length": 5 + i,
        }
        for i, g in enumerate(gold)
    ]
    curve = binned_curve(rows, 4)
    assert [c["sqrt_kl"] for c in curve] == [0.5, 2.5, 4.5, 6.5]
    assert [round(c["gold"], 6) for c in curve] == [0.1, 0.5, 0.4, 0.0]
    peak = peak_of(curve)
    assert peak["index"] == 1 and peak["sqrt_kl"] == 2.5
    assert peak["gold_peaks_before_end"] and peak["proxy_rises_after_peak"]
    assert peak["gold_drop_after_peak"] == pytest.approx(0.5)


def test_tail_mean_uses_the_last_fifth():
    rows = [{"x": float(i)} for i in range(10)] + [{"y": 1.0}]
    assert tail_mean(rows, "x") == 8.5  # last 2 of 10 values
    assert tail_mean(rows, "missing") is None


# ------------------------------------------------------------------------------------------------ PPO, several RMs
SHORT_PPO = [
    "--episodes", "16", "--rollout-batch", "8", "--mini-batches", "2", "--ppo-epochs", "1",
    "--response-length", "8", "--task.n-train", "32", "--no-progress", "--threads", "1",
]  # fmt: skip


def test_ppo_with_extra_reward_models_logs_the_weighted_sum(tiny_sft, tiny_reward, tmp_path):
    out = tmp_path / "multi"
    cli.run(
        ["ppo", "--sft", str(tiny_sft), "--reward", str(tiny_reward), *SHORT_PPO, "--out", str(out)]
        + ["--extra-rewards", str(tiny_reward), "--reward-weights", "0.7", "0.3"]
    )
    rows = read_metrics(out / "metrics.jsonl")
    for r in rows:
        # The same RM twice: both parts equal, and the score is 0.7*s + 0.3*s = s.
        assert r["objective/scores_0"] == pytest.approx(r["objective/scores_1"])
        assert r["objective/scores"] == pytest.approx(
            0.7 * r["objective/scores_0"] + 0.3 * r["objective/scores_1"]
        )


def test_ppo_rejects_a_weight_count_that_does_not_match(tiny_sft, tiny_reward, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(
            [
                "ppo",
                "--sft",
                str(tiny_sft),
                "--reward",
                str(tiny_reward),
                *SHORT_PPO,
                "--out",
                str(tmp_path / "x"),
            ]
            + ["--reward-weights", "0.7", "0.3"]
        )
    assert exit_.value.code == 2
    assert "--reward-weights has 2 values for 1 reward source " in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ CLI + schemas
def test_experiment_without_a_name_lists_the_experiments(capsys):
    with pytest.raises(SystemExit):
        cli.main(["experiment"])
    err = capsys.readouterr().err
    for name in ("length-hack", "kl-sweep", "multi-objective", "pooling", "calibration", "overoptimization"):
        assert name in err


def _files_of_an_experiment(out, n_plots):
    assert (out / "report.html").exists()
    assert len(list((out / "plots").glob("*.png"))) == n_plots
    assert list((out / "metrics").glob("*.jsonl"))
    page = (out / "report.html").read_text()
    assert f"data-figures='{n_plots}'" in page
    return json.loads((out / "summary.json").read_text())


TINY = ["--quick", "--no-progress", "--threads", "1"]


def test_length_hack_tiny_run_writes_the_summary_schema(tiny_sft, tmp_path):
    out = tmp_path / "lh"
    cli.run(
        ["experiment", "length-hack", *TINY, "--sft", str(tiny_sft), "--episodes", "64", "--out", str(out)]
    )
    s = _files_of_an_experiment(out, 3)
    assert s["experiment"] == "length-hack" and s["setting"] == "quick"
    assert [r["kl_coef"] for r in s["runs"]] == [0.0, 0.1]
    for r in s["runs"]:
        assert {"kl_coef", "final_mean_length", "final_gold", "final_kl"} <= set(r)
    assert (out / "metrics" / "beta-0.jsonl").exists() and (
        out / "runs" / "beta-0.1" / "model.safetensors"
    ).exists()
    # PPO's length reward is len(response)/100: the logged score is the mean character count / 100 (<= 0.64 here).
    rows = read_metrics(out / "metrics" / "beta-0.jsonl")
    assert all(0 < r["objective/scores"] <= 0.64 for r in rows)


def test_calibration_tiny_run_compares_training_and_unseen_pairs(tiny_sft, tmp_path):
    out = tmp_path / "cal"
    cli.run(["experiment", "calibration", *TINY, "--sft", str(tiny_sft), "--out", str(out)])
    s = _files_of_an_experiment(out, 3)
    assert [r["pairs"] for r in s["runs"]] == ["train", "unseen"]
    for r in s["runs"]:
        assert r["margin"] == pytest.approx(r["reward_chosen"] - r["reward_rejected"], abs=1e-5)
        assert 0 <= r["ece"] <= 1
    assert s["margin_gap"] == pytest.approx(s["runs"][0]["margin"] - s["runs"][1]["margin"])
    # The training pairs written for the evaluation are the reward model's own first training pairs.
    first = json.loads((out / "runs" / "train-pairs.jsonl").read_text().splitlines()[0])
    assert first == {
        k: InstructTask(seed=0).preference_pairs(1)[0][k] for k in ("prompt", "chosen", "rejected")
    }


# ------------------------------------------------------------------------------------------------ report
def _fake_experiment(root):
    root.mkdir()
    for name in ("length", "gold"):
        line_plot(root / "plots" / f"{name}.png", name, "episode", name, [("beta = 0", [1, 2, 3], [1, 4, 9])])
    (root / "runs" / "beta-0").mkdir(parents=True)
    (root / "runs" / "beta-0" / "config.json").write_text(json.dumps({"run_config": {"kl_coef": 0.0}}))
    summary = {
        "experiment": "length-hack",
        "description": "PPO on a <flawed> reward.",
        "setting": "quick",
        "runs": [{"kl_coef": 0.0, "final_mean_length": 30.5}, {"kl_coef": 0.1, "final_mean_length": 8.0}],
        "plots": {"gold.png": "Gold falls.", "length.png": "Length grows."},
        "samples": {"beta = 0": [{"prompt": "Q: <b>x</b>\nA:", "ppo": " x x x"}]},
        "config": {"quick": True},
        "seconds": 1.0,
    }
    (root / "summary.json").write_text(json.dumps(summary))
    return root


def test_report_of_an_experiment_embeds_every_plot_with_its_caption(tmp_path):
    run = _fake_experiment(tmp_path / "exp")
    page = build_report(run).read_text()
    alts = re.findall(r'<img alt="([^"]+)" src="data:image/png;base64,', page)
    assert alts == ["gold", "length"]  # in the order of the captions
    assert "Gold falls." in page and "Length grows." in page
    assert "final_mean_length" in page and "30.5" in page  # the runs table
    assert "runs/beta-0" in page and "kl_coef" in page  # sub-run config
    assert "&lt;b&gt;x&lt;/b&gt;" in page and "<b>x</b>" not in page and "&lt;flawed&gt;" in page
    assert 'src="http' not in page and "<link" not in page


def test_report_of_an_experiment_renders_in_a_headless_browser(tmp_path):
    page = build_report(_fake_experiment(tmp_path / "exp")).read_text()
    assert images_in_browser(page, tmp_path) == {"n": 2, "broken": []}


# ------------------------------------------------------------------------------------------------ slow: --quick
def _quick(name, tmp_path, *extra):
    out = tmp_path / name
    cli.run(["experiment", name, "--quick", "--no-progress", "--threads", "1", "--out", str(out), *extra])
    return json.loads((out / "summary.json").read_text())


@pytest.mark.slow
def test_quick_length_hack_length_explodes_without_the_leash(tmp_path):
    free, leashed = _quick("length-hack", tmp_path)["runs"]
    assert free["kl_coef"] == 0.0 and leashed["kl_coef"] == 0.1
    assert free["final_mean_length"] > 1.5 * leashed["final_mean_length"]
    assert free["final_gold"] < leashed["final_gold"]
    assert free["final_kl"] > leashed["final_kl"]


@pytest.mark.slow
def test_quick_kl_sweep_final_kl_falls_as_beta_grows(tmp_path):
    runs = _quick("kl-sweep", tmp_path)["runs"]
    assert [r["kl_coef"] for r in runs] == [0.001, 0.02, 0.5]
    kls = [r["final_kl"] for r in runs]
    assert kls[0] > kls[1] > kls[2], kls


@pytest.mark.slow
def test_quick_multi_objective_is_shorter_at_no_worse_gold(tmp_path):
    helpful, combined = _quick("multi-objective", tmp_path)["runs"]
    assert helpful["run"] == "helpful-only" and combined["run"] == "combined"
    assert combined["final_mean_length"] < helpful["final_mean_length"]
    # "No worse" within noise: final_gold is a mean over the last 6 updates x 32 responses (gold in [-1, 1], sd
    # <= ~0.7), so the difference of two runs has a standard error of ~0.07; a strict >= would fail half the time
    # whenever the quick setting's true difference is ~0 (it did once: -0.7105 vs -0.7054).
    assert combined["final_gold"] >= helpful["final_gold"] - 0.1


@pytest.mark.slow
def test_quick_overoptimization_gold_peaks_early_while_proxy_rises(tmp_path):
    s = _quick("overoptimization", tmp_path)
    curve, peak = s["curve"], s["peak"]
    assert peak["gold_peaks_before_end"] and peak["index"] < len(curve) - 1
    assert peak["proxy_rises_after_peak"] and curve[-1]["proxy"] > curve[0]["proxy"]
    assert peak["gold_drop_after_peak"] > 0.1  # a real fall, not noise around a flat line


@pytest.mark.slow
def test_quick_pooling_and_calibration_write_their_figures(tmp_path):
    pooling = _quick("pooling", tmp_path)
    assert [r["pooling"] for r in pooling["runs"]] == ["last", "mean"]
    assert all(r["accuracy"] > 0.55 and 0 <= r["ece"] <= 1 for r in pooling["runs"])
    cal = _quick("calibration", tmp_path)
    train, unseen = cal["runs"]
    assert train["accuracy"] > 0.55 and unseen["accuracy"] > 0.55
    assert (tmp_path / "calibration" / "plots" / "reliability.png").exists()


# ------------------------------------------------------------------------------------------------ iterated
def test_iterated_label_pairs_use_the_task_labeller_and_count_what_they_skip():
    import random

    from rlhf.experiments.iterated import label_pairs

    prompt = "Q: Repeat the word: kel\nA:"
    task = InstructTask(label_noise=0.0)

    def rows_of(*texts, finished=True):
        return [{"text": t, "finished": finished} for t in texts]

    policy = rows_of(" kel.", " dog.", " kel.", "")
    sft = rows_of(" dog.", " kel.", " kel.", " kel.")
    rows, skipped = label_pairs(task, [prompt] * 4, policy, sft, random.Random(0))
    # The same text twice, and an immediate EOS: counted, not lost.
    assert skipped == {"identical": 1, "empty": 1}
    # No noise, no bias: the gold judge's choice, whichever side the policy sample is on.
    assert rows == [{"prompt": prompt, "chosen": " kel.", "rejected": " dog."}] * 2
    # A cut-off answer (no EOS) scores -1 with the gold judge, and so with the annotator: below a wrong one (-0.5).
    rows, _ = label_pairs(
        task, [prompt], rows_of(" kel.", finished=False), rows_of(" dog."), random.Random(0)
    )
    assert rows == [{"prompt": prompt, "chosen": " dog.", "rejected": " kel."}]


def test_iterated_tiny_run_writes_the_per_round_schema(tiny_sft, tmp_path):
    out = tmp_path / "it"
    cli.run(
        ["experiment", "iterated", *TINY, "--sft", str(tiny_sft), "--episodes", "32", "--rounds", "2"]
        + ["--policy-pairs", "24", "--out", str(out)]
    )
    s = _files_of_an_experiment(out, 2)
    assert [r["round"] for r in s["runs"]] == [1, 2]
    first, second = s["runs"]
    for r in s["runs"]:
        assert 0 <= r["rm_agreement_policy"] <= 1 and r["agreement_pairs"] > 0
        lo, hi = r["heldout_gold_diff_ci95"]
        assert lo <= r["heldout_gold"] - r["heldout_gold_sft"] <= hi
    # Round 1's labelled policy pairs were added to the first pairs for the second reward model.
    assert first["added_pairs"] + first["skipped_identical"] + first["skipped_empty"] == 24
    assert second["rm_pairs"] == first["rm_pairs"] + first["added_pairs"]
    lines = (out / "runs" / "pairs-2.jsonl").read_text().splitlines()
    assert len(lines) == second["rm_pairs"] and set(json.loads(lines[-1])) == {"prompt", "chosen", "rejected"}
    assert 0 <= first["next_rm_agreement_policy"] <= 1 and "next_rm_agreement_policy" not in second
    assert len(read_metrics(out / "metrics" / "rounds.jsonl")) == 2


@pytest.mark.slow
def test_quick_iterated_agreement_on_policy_samples_rises(tmp_path):
    s = _quick("iterated", tmp_path)
    first, last = s["runs"][0], s["runs"][-1]
    assert len(s["runs"]) == 3
    assert first["rm_agreement_policy"] < last["rm_agreement_policy"], [
        r["rm_agreement_policy"] for r in s["runs"]
    ]


# ------------------------------------------------------------------------------------------------ biases
def test_compare_measures_on_premise_prompts_when_its_task_asks(tiny_sft, tiny_reward, tmp_path):
    # `rlhf compare --task.premise-fraction 1`: every held-out capital prompt carries a wrong premise, so the
    # sycophancy detector has something to measure (by default no prompt does).
    base = ["compare", "--sft", str(tiny_sft), "--policy", str(tiny_sft), "--reward", str(tiny_reward)]
    base += ["--n-prompts", "12", "--samples-per-prompt", "1", "--response-length", "8", "--no-progress"]
    plain = cli.run([*base, "--threads", "1", "--out", str(tmp_path / "plain")])
    premise = cli.run([*base, "--threads", "1", "--task.premise-fraction", "1", "--out", str(tmp_path / "p")])
    assert not any("I'm sure" in s["prompt"] for s in plain["samples"])
    assert any("I'm sure" in s["prompt"] for s in premise["samples"])
    assert set(premise["hack_sft"]) == {
        f"hack/{d}_rate" for d in ("sycophantic", "hedging", "formatted", "padded")
    }


def test_biases_tiny_run_writes_the_summary_schema(tiny_sft, tmp_path):
    out = tmp_path / "biases"
    cli.run(
        ["experiment", "biases", *TINY, "--sft", str(tiny_sft), "--episodes", "64", "--out", str(out)]
        + ["--arms", "control", "format", "--large-beta-arms", "format", "--bias-pairs", "100"]
    )
    s = _files_of_an_experiment(out, 4)
    assert s["experiment"] == "biases" and s["large_beta_arms"] == ["format"]
    assert [(r["arm"], r["kl_coef"]) for r in s["runs"]] == [
        ("control", 0.02),
        ("format", 0.02),
        ("format", 0.5),
    ]
    f = s["findings"]["format"]
    assert f["detector"] == "formatted" and 0 <= f["rm_prefers_biased"] <= 1
    assert {"control_rm_prefers_biased", "final_hack_small_beta", "final_hack_large_beta"} <= set(f)
    assert set(s["rm_bias_preference"]) == {"control", "format"}
    # Every PPO update logs the detectors' rates; the control arm's prompts and SFT data had the fractions on.
    rows = read_metrics(out / "metrics" / "format-beta-0.02.jsonl")
    assert all(0 <= r["hack/formatted_rate"] <= 1 for r in rows)
    task = json.loads((out / "runs" / "reward-control" / "config.json").read_text())["run_config"]["task"]
    assert task["premise_fraction"] == 1.0 and task["format_fraction"] == 0.1 and task["bias_format"] == 0.0
    assert task["agree_fraction"] == 0.3
    assert json.loads((out / "runs" / "reward-format" / "config.json").read_text())["run_config"]["task"][
        "bias_format"
    ] == pytest.approx(0.8)


@pytest.mark.slow
def test_quick_biases_format_arm_is_learned_exploited_and_held_back_by_kl(tmp_path):
    # The format arm is the most reliable at --quick size (docs/experiments.md has the figures of every arm): its
    # hack showed at beta 0.001 and 0.02; hedging's only at 0.02, and length and sycophancy policies turned to
    # decoration (which their reward models also like) rather than padding or agreeing.
    s = _quick("biases", tmp_path, "--arms", "control", "format")
    f = s["findings"]["format"]
    assert f["rm_prefers_biased"] > f["control_rm_prefers_biased"]
    assert f["final_hack_small_beta"] > f["final_hack_large_beta"]
    assert f["heldout_hack_small_beta"] > f["heldout_hack_large_beta"]
    assert f["final_hack_small_beta"] > f["heldout_hack_sft"]  # the hack rate rose under PPO
    small = next(r for r in s["runs"] if r["arm"] == "format" and r["kl_coef"] == 0.02)
    assert small["heldout_gold"] < small["heldout_gold_sft"]  # proxy up, gold down


# ------------------------------------------------------------------------------------------------ ensemble
def test_ensemble_verdict_by_hand():
    from rlhf.experiments.ensemble import gold_at, verdict

    def row(run, size, peak, se):
        return {"run": run, "size": size, "peak_gold": peak, "peak_gold_se": se, "peak_sqrt_kl": 1.0}

    # The best ensemble 0.30 vs the single 0.20: +0.10, standard error sqrt(0.03^2 + 0.04^2) = 0.05 -> 2 se: not
    # "clearly" (needs more than 2 se).
    v = verdict(
        [row("single", 1, 0.20, 0.03), row("ens3-mean", 3, 0.30, 0.04), row("ens3-min", 3, 0.10, 0.02)]
    )
    assert v["ensemble_peak_at_least_single"] and v["best_ensemble"] == "ens3-mean"
    assert v["peak_gap"] == pytest.approx(0.10) and v["peak_gap_se"] == pytest.approx(0.05)
    assert v["ensembles_at_least_single"] == ["ens3-mean"] and "within noise" in v["note"]
    worse = verdict([row("single", 1, 0.20, 0.01), row("ens3-min", 3, 0.10, 0.01)])
    assert not worse["ensemble_peak_at_least_single"] and worse["note"].startswith("It was not")
    assert "note" in verdict([row("single", 1, 0.2, 0.01)])  # nothing to compare: said, not a crash
    # Gold at one sqrt KL: bins sorted by sqrt KL, linear between them, flat past the ends.
    curve = [{"sqrt_kl": 2.0, "gold": 0.0}, {"sqrt_kl": 1.0, "gold": 0.4}, {"sqrt_kl": 3.0, "gold": -0.2}]
    assert gold_at(curve, 1.5) == pytest.approx(0.2) and gold_at(curve, 2.5) == pytest.approx(-0.1)
    assert gold_at(curve, 0.5) == 0.4 and gold_at(curve, 9.0) == -0.2


def test_ensemble_tiny_run_writes_the_summary_schema(tiny_sft, tmp_path):
    out = tmp_path / "ens"
    cli.run(
        ["experiment", "ensemble", *TINY, "--sft", str(tiny_sft), "--episodes", "64", "--out", str(out)]
        + ["--sizes", "1", "2", "3", "--reductions", "min"]
    )
    s = _files_of_an_experiment(out, 4)
    assert s["experiment"] == "ensemble" and s["sizes"] == [1, 2, 3] and s["reductions"] == ["min"]
    assert sorted(r["run"] for r in s["runs"]) == ["ens2-min", "ens3-min", "single"]
    assert [r["rank"] for r in s["runs"]] == [1, 2, 3]
    peaks = [r["peak_gold"] for r in s["runs"]]
    assert peaks == sorted(peaks, reverse=True)  # the table ranks the runs by gold peak
    for r in s["runs"]:
        assert r["peak_gold"] == max(c["gold"] for c in s["curves"][r["run"]])
        assert min(c["gold"] for c in s["curves"][r["run"]]) <= r["gold_at_common_sqrt_kl"] <= r["peak_gold"]
        assert (r["final_ensemble_std"] is None) == (r["size"] == 1)
    v = s["verdict"]
    single = next(r for r in s["runs"] if r["run"] == "single")
    assert v["single_peak_gold"] == single["peak_gold"] and isinstance(
        v["ensemble_peak_at_least_single"], bool
    )
    # The 2-ensemble is the 3-ensemble's first two members, copied; compare's proxy is the reduced score.
    spec = json.loads((out / "runs" / "reward-2" / "config.json").read_text())["ensemble"]
    assert spec["size"] == 2 and spec["members"] == ["member-0", "member-1"]
    assert (out / "runs" / "reward-2" / "member-1" / "model.safetensors").read_bytes() == (
        out / "runs" / "reward-3" / "member-1" / "model.safetensors"
    ).read_bytes()
    cmp = json.loads((out / "runs" / "ens3-min-compare" / "summary.json").read_text())
    assert cmp["ensemble"]["size"] == 3 and cmp["ensemble"]["reduce"] == "min"
    rows = read_metrics(out / "metrics" / "ens3-min.jsonl")
    assert all(r["objective/ensemble_std"] >= 0 for r in rows)


@pytest.mark.slow
def test_quick_ensemble_records_each_runs_gold_peak_and_the_verdict(tmp_path):
    # Structure, not direction: at --quick size whether an ensemble's gold peak beats the single model's is within
    # the noise of a peak of 8 bins of 4 updates (docs/experiments.md has the measured peaks); the verdict must say
    # which way it went, with the gap and its standard error.
    s = _quick("ensemble", tmp_path)
    assert s["sizes"] == [1, 3] and s["reductions"] == ["mean", "min"]
    assert sorted(r["run"] for r in s["runs"]) == ["ens3-mean", "ens3-min", "single"]
    v = s["verdict"]
    single = next(r for r in s["runs"] if r["size"] == 1)
    best = max((r for r in s["runs"] if r["size"] > 1), key=lambda r: r["peak_gold"])
    assert v["best_ensemble"] == best["run"]
    assert v["ensemble_peak_at_least_single"] == (best["peak_gold"] >= single["peak_gold"])
    assert v["note"].startswith("It was not") != v["ensemble_peak_at_least_single"]
    for r in s["runs"]:
        assert r["peak_gold_se"] > 0 and r["heldout_gold"] is not None
        assert (r["final_ensemble_std"] or 0) >= 0


# ------------------------------------------------------------------------------------------------ algorithms
def test_nested_bootstrap_ci_by_hand():
    import torch

    from rlhf.experiments.algorithms import nested_bootstrap_ci

    # Two seeds, every prompt of seed 0 scoring 0 and of seed 1 scoring 1: resampling the seeds gives a mean of 0
    # (both draws seed 0, probability 1/4), 0.5 (1/2) or 1 (1/4), so the 95% interval is [0, 1] - the seed-to-seed
    # spread counts, which a bootstrap over prompts alone would call [0.5, 0.5].
    assert nested_bootstrap_ci([torch.zeros(5), torch.ones(5)], 2000, 0) == [0.0, 1.0]
    # One seed: prompts only; constant prompts leave nothing to vary.
    assert nested_bootstrap_ci([torch.full((7,), 0.3)], 500, 0) == pytest.approx([0.3, 0.3])
    lo, hi = nested_bootstrap_ci([torch.arange(10.0)], 2000, 0)
    assert 0 < lo < 4.5 < hi < 9


def test_algorithms_tiny_run_writes_the_summary_schema_and_its_report_decodes(
    tiny_sft, tiny_reward, tmp_path
):
    out = tmp_path / "alg"
    cli.run(
        [
            "experiment",
            "algorithms",
            *TINY,
            "--sft",
            str(tiny_sft),
            "--reward",
            str(tiny_reward),
            "--out",
            str(out),
        ]
        + ["--budget", "16", "--seeds", "2", "--kl-coefs", "0.1", "--dpo-betas", "0.1", "--pool", "8"]
        + ["--best-of", "1", "2", "8"]
    )
    s = _files_of_an_experiment(out, 3)
    assert s["experiment"] == "algorithms" and s["seeds"] == 2 and s["budget"] == 16
    assert [r["run"] for r in s["runs"]] == [
        "ppo kl=0.1",
        "grpo kl=0.1",
        "rloo kl=0.1",
        "reinforce++ kl=0.1",
        "dpo beta=0.1",
        "best-of-1",
        "best-of-2",
        "best-of-8",
    ]
    for r in s["runs"]:
        assert r["seeds"] == 2 and r["gold_ci95"][0] <= r["gold"] <= r["gold_ci95"][1]
        assert {"proxy", "kl", "sqrt_kl", "length", "seconds", "hack/formatted_rate"} <= set(r)
    # Every on-policy run sampled the same 16 responses: GRPO and RLOO 4 per prompt over 4 prompts.
    for algo, per_prompt in (("ppo", 1), ("grpo", 4), ("rloo", 4), ("reinforce++", 1)):
        cfg = json.loads((out / "runs" / f"{algo}-0.1-seed1" / "config.json").read_text())["run_config"]
        assert cfg["episodes"] * cfg["samples_per_prompt"] == 16 and cfg["samples_per_prompt"] == per_prompt
        assert cfg["kl_coef"] == 0.1 and cfg["seed"] == 1
    # DPO: 16 informative pairs of SFT samples labelled by the reward model; a skipped pair (the same text twice,
    # or an empty response) is replaced by a pair on the next prompt.
    pairs = (out / "runs" / "dpo-pairs-seed0.jsonl").read_text().splitlines()
    dpo = next(r for r in s["runs"] if r["algorithm"] == "dpo")
    assert len(pairs) == 16 and dpo["pairs"] == 16
    assert dpo["sampled_pairs"] - dpo["skipped_pairs"] == 16
    assert all(json.loads(p)["chosen"] != json.loads(p)["rejected"] for p in pairs)
    # Best-of-N: N = 1 is the SFT policy (KL 0); the measured KL never exceeds log N - (N-1)/N (ties lower it).
    kls = {c["n"]: c for c in s["best_of_n_kl"]}
    assert kls[1]["kl_measured"] == pytest.approx(0.0, abs=1e-9)
    assert all(c["kl_measured"] <= c["kl_bound"] + 1e-9 for c in kls.values())
    assert [r["rank"] for r in s["ranking"]] == list(range(1, 7))
    assert (out / "evals" / "sft.jsonl").exists() and (out / "evals" / "best-of-n-pool-seed1.jsonl").exists()
    page = (out / "report.html").read_text()
    assert images_in_browser(page, tmp_path) == {"n": 3, "broken": []}


@pytest.mark.slow
def test_quick_algorithms_best_of_n_kl_and_report(tmp_path):
    s = _quick("algorithms", tmp_path)
    # The pool's measured KL is at most the closed form and close to it at N = 2 (few ties among 64 samples).
    kls = {c["n"]: c for c in s["best_of_n_kl"]}
    assert all(c["kl_measured"] <= c["kl_bound"] + 1e-9 for c in kls.values())
    assert kls[2]["kl_measured"] == pytest.approx(kls[2]["kl_bound"], abs=0.03)
    # Best-of-N raises the proxy with N (it picks by it).
    bon = [r for r in s["runs"] if r["algorithm"] == "best-of-n"]
    assert bon[-1]["proxy"] > bon[0]["proxy"]
    page = (tmp_path / "algorithms" / "report.html").read_text()
    assert images_in_browser(page, tmp_path) == {"n": 3, "broken": []}


def test_algorithms_refuses_a_pool_smaller_than_its_largest_n(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(
            ["experiment", "algorithms", "--out", str(tmp_path / "x"), "--pool", "4", "--best-of", "2", "8"]
        )
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "--pool 4 is smaller than the largest --best-of 8" in err and "Traceback" not in err
    assert not (tmp_path / "x").exists()
