"""Kubernetes provisioning: our renderer and validator against their reference tools, alternately.

* render: a fresh ``python`` rendering ``infra/k8s/overlays/prod`` with ``stackbook.k8s.render``
  (without the runbook CronJobs, which ``kubectl kustomize`` cannot generate) against a fresh
  ``kubectl kustomize`` of the same overlay (kustomize v5 in Go: the floor).
* validate: ``stackbook.k8s.validate.validate_manifests`` over the rendered prod manifests, in
  process, against ``kubernetes_validate.validate(m, version, strict=True)`` for each manifest
  (the library's own API, same schemas), warm (after one call of each).

Reports medians, the ratio of medians and the spread of pairwise ratios.

    .venv/bin/python benchmarks/k8s_render_validate.py [--repeat 7]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from stackbook.core.privacy import TELEMETRY_OFF

ROOT = Path(__file__).resolve().parents[1]
OVERLAY = ROOT / "infra" / "k8s" / "overlays" / "prod"
ENV = {**os.environ, **TELEMETRY_OFF}
RENDER = "from stackbook.k8s import render; import sys; sys.stdout.write(render.dump(render.render('prod', [])))"


def timed_process(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True)
    took = time.perf_counter() - t0
    if done.returncode != 0:
        sys.exit(f"{cmd[0]} failed:\n{done.stderr[-2000:]}")
    return took


def timed_call(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def report(name: str, ours: list[float], floor: list[float], floor_name: str) -> None:
    ratios = sorted(o / f for o, f in zip(ours, floor))
    print(f"{name}: stackbook median {statistics.median(ours):.3f} s, {floor_name} median "
          f"{statistics.median(floor):.3f} s, ratio of medians {statistics.median(ours) / statistics.median(floor):.2f}, "
          f"pairwise min/median/max {ratios[0]:.2f} / {statistics.median(ratios):.2f} / {ratios[-1]:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()

    kubectl = shutil.which("kubectl")
    if kubectl:
        ours, floor = [], []
        for _ in range(args.repeat):
            ours.append(timed_process([sys.executable, "-c", RENDER]))
            floor.append(timed_process([kubectl, "kustomize", "--enable-alpha-plugins", str(OVERLAY)]))
        report("render prod (fresh process)", ours, floor, "kubectl kustomize")
    else:
        print("render: no kubectl here, skipped")

    import kubernetes_validate

    from stackbook.k8s import KUBERNETES_VERSION, render, validate

    manifests = render.render("prod")
    cold = timed_call(lambda: validate.validate_manifests(manifests))
    lib_cold = timed_call(lambda: [kubernetes_validate.validate(m, KUBERNETES_VERSION, strict=True) for m in manifests])
    ours, floor = [], []
    for _ in range(args.repeat):
        ours.append(timed_call(lambda: validate.validate_manifests(manifests)))
        floor.append(timed_call(lambda: [kubernetes_validate.validate(m, KUBERNETES_VERSION, strict=True)
                                         for m in manifests]))
    print(f"validate {len(manifests)} prod manifests: first call stackbook {cold:.3f} s, kubernetes-validate "
          f"{lib_cold:.3f} s")
    print("  runs stackbook", [round(x, 3) for x in ours], "kubernetes-validate", [round(x, 3) for x in floor])
    report(f"validate {len(manifests)} prod manifests (warm)", ours, floor, "kubernetes_validate.validate")


if __name__ == "__main__":
    main()
