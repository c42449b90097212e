"""Loading a COCO instances file at train2017 scale: `CocoIndex.load` against `pycocotools.coco.COCO`.

    python benchmarks/bench_annotation_loading.py [--images 118000] [--boxes 860000] [--repeats 2]
                                                  [--json PATH]

A synthetic instances file shaped like train2017 (118k images, 860k annotations over COCO's 80
category ids, each with a 16-vertex polygon, about 1% crowd) is written to a temporary file once
(or taken from --json PATH, which is kept). Every measurement runs in a fresh child process, so that
neither parser inherits the other's heap:
  time    CPU time (user + system) and wall time of the load call alone (imports happen before the
          clock starts); the summary ratio is of CPU time, which other load on the machine disturbs
          far less than wall time
  memory  the child's peak resident set size (getrusage ru_maxrss) after the load, minus its resident
          set size just before it, i.e. the extra peak memory the load needed; also what stays
          resident once the load returned (the parsed JSON is freed by CocoIndex, kept by COCO)
Reported: the best time and the largest peak over --repeats runs of each, alternating the parsers.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

COCO_CATEGORY_IDS = [c for c in range(1, 91) if c not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)]

CHILD = r"""
import contextlib, gc, io, json, resource, sys, time
import numpy as np
from pycocotools.coco import COCO
from cvengine.data.coco import CocoIndex

def rss_kib():
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize() // 1024

path, which = sys.argv[1], sys.argv[2]
gc.collect()
before = rss_kib()
c0 = time.process_time()
t0 = time.perf_counter()
if which == "cvengine":
    obj = CocoIndex.load(path, "images")
    n = int(obj.offsets[-1])
else:
    with contextlib.redirect_stdout(io.StringIO()):
        obj = COCO(path)
    n = len(obj.anns)
seconds = time.perf_counter() - t0
cpu_seconds = time.process_time() - c0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
print(json.dumps({"seconds": seconds, "cpu_seconds": cpu_seconds, "peak_extra_kib": peak - before, "retained_kib": rss_kib() - before,
                  "annotations": n}))
"""


def write_instances(path: str, num_images: int, num_boxes: int, seed: int) -> None:
    import numpy as np

    rng = np.random.default_rng(seed)
    per_image = rng.multinomial(num_boxes, np.full(num_images, 1.0 / num_images))
    widths = rng.choice([640, 480, 500, 427], size=num_images)
    heights = rng.choice([480, 640, 375, 427], size=num_images)
    images = [
        {"license": 1, "file_name": f"{100000 + i:012d}.jpg", "coco_url": "", "height": int(heights[i]),
         "width": int(widths[i]), "date_captured": "2013-11-14 16:28:13", "flickr_url": "", "id": 100000 + i}
        for i in range(num_images)
    ]
    image_of = np.repeat(np.arange(num_images), per_image)
    w_img, h_img = widths[image_of], heights[image_of]
    side = np.exp(rng.uniform(np.log(4), np.log(400), size=num_boxes))
    bw = np.round(np.minimum(side, w_img - 1), 2)
    bh = np.round(np.minimum(side * np.exp(rng.normal(0, 0.5, size=num_boxes)), h_img - 1), 2)
    x = np.round(rng.uniform(0, w_img - bw), 2)
    y = np.round(rng.uniform(0, h_img - bh), 2)
    cats = rng.choice(COCO_CATEGORY_IDS, size=num_boxes)
    crowd = rng.random(num_boxes) < 0.01
    # 16-vertex polygon on the box's inscribed ellipse, 2 decimals as in COCO's files.
    t = np.linspace(0, 2 * np.pi, 16, endpoint=False)
    px = np.round(x[:, None] + bw[:, None] * (0.5 + 0.5 * np.cos(t)), 2)
    py = np.round(y[:, None] + bh[:, None] * (0.5 + 0.5 * np.sin(t)), 2)
    poly = np.stack([px, py], axis=2).reshape(num_boxes, 32)

    with open(path, "w") as fh:
        fh.write('{"info": {"description": "synthetic train2017-shaped"}, "licenses": [], "images": ')
        json.dump(images, fh)
        fh.write(', "annotations": [')
        rows = zip(image_of.tolist(), x.tolist(), y.tolist(), bw.tolist(), bh.tolist(), cats.tolist(),
                   crowd.tolist(), poly.tolist())
        for k, (i, xx, yy, ww, hh, c, cr, pp) in enumerate(rows):
            ann = {"segmentation": [pp], "area": round(ww * hh * 0.785, 2), "iscrowd": int(cr),
                   "image_id": 100000 + i, "bbox": [xx, yy, ww, hh], "category_id": c, "id": k + 1}
            fh.write((", " if k else "") + json.dumps(ann))
        fh.write('], "categories": ')
        json.dump([{"supercategory": "thing", "id": c, "name": f"class{c}"} for c in COCO_CATEGORY_IDS], fh)
        fh.write("}")


def measure(path: str, which: str) -> dict:
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-c", CHILD, path, which], capture_output=True, text=True, env=env,
                         check=False)
    if out.returncode != 0:
        raise SystemExit(f"{which} child failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=118_000)
    parser.add_argument("--boxes", type=int, default=None, help="default: 7.3 per image (860k at 118k images)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="instances file to use (written there first if missing, then kept)")
    args = parser.parse_args()
    num_boxes = args.boxes if args.boxes is not None else round(args.images * 860 / 118)

    tmpdir = None
    path = args.json
    if path is None:
        tmpdir = tempfile.TemporaryDirectory(prefix="cvengine-bench-")
        path = os.path.join(tmpdir.name, "instances.json")
    if not os.path.exists(path):
        t0 = time.perf_counter()
        write_instances(path, args.images, num_boxes, args.seed)
        print(f"wrote {path}: {args.images} images, {num_boxes} annotations, "
              f"{os.path.getsize(path) / 2**20:.0f} MiB in {time.perf_counter() - t0:.0f} s")
    else:
        print(f"using {path} ({os.path.getsize(path) / 2**20:.0f} MiB)")

    runs: dict[str, list[dict]] = {"pycocotools": [], "cvengine": []}
    for r in range(args.repeats):
        for which in (("pycocotools", "cvengine") if r % 2 == 0 else ("cvengine", "pycocotools")):
            runs[which].append(measure(path, which))
    if tmpdir is not None:
        tmpdir.cleanup()

    best = {}
    for which, rs in runs.items():
        best[which] = {
            "seconds": min(r["seconds"] for r in rs),
            "cpu_seconds": min(r["cpu_seconds"] for r in rs),
            "peak_mib": max(r["peak_extra_kib"] for r in rs) / 1024,
            "retained_mib": max(r["retained_kib"] for r in rs) / 1024,
        }
        times = ", ".join(f"{r['seconds']:.2f}" for r in rs)
        cpu = ", ".join(f"{r['cpu_seconds']:.2f}" for r in rs)
        print(f"{which:<12} wall {best[which]['seconds']:6.2f} s (runs: {times})  CPU {best[which]['cpu_seconds']:6.2f} s"
              f" (runs: {cpu})  extra peak RSS "
              f"{best[which]['peak_mib']:7.0f} MiB  retained {best[which]['retained_mib']:7.0f} MiB"
              f"  annotations {rs[0]['annotations']}")
    ratio_mem = best["cvengine"]["peak_mib"] / best["pycocotools"]["peak_mib"]
    print(f"ratio cvengine/pycocotools peak memory: {ratio_mem:.2f}")
    print(f"ratio cvengine/pycocotools wall time: {best['cvengine']['seconds'] / best['pycocotools']['seconds']:.2f}")
    print(f"ratio cvengine/pycocotools time: {best['cvengine']['cpu_seconds'] / best['pycocotools']['cpu_seconds']:.2f}")


if __name__ == "__main__":
    main()
