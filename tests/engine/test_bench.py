"""The benchmark's quick form runs end to end (a smoke test: structure only, no timing asserts)."""
import json
import subprocess
import sys

from tests.conftest import ROOT


def test_quick_benchmark_reports_every_figure():
    out = subprocess.run([sys.executable, "-m", "tlcore.bench", "--quick"], cwd=ROOT, capture_output=True,
                         text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    for key in ("fe_over_floor", "speedup_vs_textbook", "second_run_speedup", "finetune_depth0_efficiency",
                "finetune_depth4_efficiency", "peak_rss_mb", "rss_mb_per_extra_image", "app_startup_seconds",
                "rerun_seconds"):
        assert key in report, key
    assert set(report["rerun_seconds"]) == {"data", "train"}
    assert all(v > 0 for v in report["peak_rss_mb"].values())
    for line in ("1. feature extraction", "2. textbook loop", "3. second run", "4. fine-tune", "5. peak memory",
                 "6. app start"):
        assert line in out.stderr
