"""Serving latency: the champion over REST (``mlflow models serve``) against calling it in process.

One server (``stackbook.train.serve.ModelServer``, uvicorn, one worker, 127.0.0.1) for the champion of
the dev registry. Each trial sends REQUESTS requests, one customer's feature row each, over one
keep-alive HTTP connection, then times ``model.predict`` on the same rows one at a time in this
process; p50 and p99 of each, medians over TRIALS. Startup (process start to the first /ping) is
reported apart. Needs a champion (train_customer_model) and the marts; writes nothing.
Usage: .venv/bin/python benchmarks/serving_latency.py [--trials 5] [--requests 300] [--model customer_spend_90d]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--model", default="customer_spend_90d")
    args = parser.parse_args()
    from stackbook.train import model as train_model
    from stackbook.train import score, serve

    champ = score.champion(args.model)
    orders, _ = train_model.load_orders()
    rows = score.features_at(orders, score.parse_date("", orders), champ.horizon_days).head(args.requests)
    trials = []
    with serve.ModelServer(champ.uri) as server:
        serve.smoke_test(server, champ.model, rows.head(20))  # warm-up of both sides
        for _ in range(args.trials):
            report = serve.smoke_test(server, champ.model, rows)
            assert report.matched == report.requests, report.mismatches
            trials.append(report)
        startup = server.startup_s
    med = {key: statistics.median(getattr(t, key) for t in trials)
           for key in ("p50_ms", "p99_ms", "in_process_p50_ms", "in_process_p99_ms")}
    print(json.dumps({"model": champ.uri, "requests": len(rows), "trials": args.trials, "startup_s": startup,
                      **{k: round(v, 3) for k, v in med.items()},
                      "ratio_p50_rest_to_in_process": round(med["p50_ms"] / med["in_process_p50_ms"], 1),
                      "ratio_p99_rest_to_in_process": round(med["p99_ms"] / med["in_process_p99_ms"], 1)}, indent=1))


if __name__ == "__main__":
    main()
