"""The data check on real photos with planted wrong labels (issue 39). Run: python -m benchmarks.data_check
[--backbone NAME] [--seeds N]

The cut-out photos of the Debian package tuxpaint-stamps-default (never seen by the code or the tests; see
benchmarks/zero_shot.py): 100 photos of bird (25), fish (11), fruit (26), flower (20) and vegetable (18): the classes of the issue, drawn
per seed; 10 of them, drawn by the same seed, moved into another class (drawn too). Prints, per seed, how many of
the 10 the check ranks in its top 10 (the review panel's order, ``DataCheck.findings``) and among everything it
flags, and the check's time (features cached after the first seed: the rest of the check).
"""
from __future__ import annotations

import json
import random
import sys
import time

COUNTS = {"bird": 25, "fish": 11, "fruit": 26, "flower": 20, "vegetable": 18}
MOVED = 10


def planted(seed: int) -> tuple[list[tuple[str, bytes, str]], set[str]]:
    """(name, bytes, label) of 100 photos, 10 of them in a wrong class; the moved ones' names."""
    from benchmarks.zero_shot import tuxpaint_photos

    photos = tuxpaint_photos(list(COUNTS))
    rng = random.Random(seed)
    files = [(f"{c}-{name}", data, c) for c, n in COUNTS.items() for name, data in rng.sample(photos[c], n)]
    moved = set(rng.sample(range(len(files)), MOVED))
    out = []
    for k, (name, data, label) in enumerate(files):
        if k in moved:
            label = rng.choice([c for c in COUNTS if c != label])
        out.append((name, data, label))
    return out, {files[k][0] for k in moved}


def main() -> int:
    import argparse

    import tlcore
    from tlcore.analysis.clean import check_data

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default=tlcore.DEFAULT_BACKBONE)
    ap.add_argument("--seeds", type=int, default=5)
    args = ap.parse_args()
    total_top, total_found = 0, 0
    for seed in range(args.seeds):
        files, moved = planted(seed)
        images = tlcore.ImageSet()
        images.add(files)
        start = time.perf_counter()
        result = check_data(images, args.backbone, seed)
        seconds = time.perf_counter() - start
        ranked = [f.name for f in result.findings()]
        top = len(moved & set(ranked[:10]))
        found = len(moved & {f.name for f in result.label_errors})
        total_top, total_found = total_top + top, total_found + found
        print(json.dumps({"seed": seed, "backbone": args.backbone, "images": result.images,
                          "moved_in_top_10": top, "moved_flagged_as_labels": found, "flagged": len(ranked),
                          "label_errors": len(result.label_errors), "seconds_with_features": round(seconds, 2)}))
    print(json.dumps({"seeds": args.seeds, "backbone": args.backbone, "moved_in_top_10": f"{total_top}/{MOVED * args.seeds}",
                      "moved_flagged": f"{total_found}/{MOVED * args.seeds}"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
