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
