"""The MLflow store: two runners started at the same moment on a new sqlite store both finish."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# What a runner does first with the store: check it (creating and migrating a new one), then find or create
# the experiment and start a run. The two processes import everything, then wait for each other, so the
# store is opened by both within milliseconds.
SCRIPT = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    sys.path.insert(0, sys.argv[1])
    from training.tracking import Tracker
    import mlflow.store.tracking.sqlalchemy_store  # noqa: F401 - imported before the barrier
    folder, me = Path(sys.argv[2]), sys.argv[3]
    (folder / f"ready-{me}").touch()
    deadline = time.time() + 120
    while len(list(folder.glob("ready-*"))) < 2 and time.time() < deadline:
        time.sleep(0.001)
    tracker = Tracker()
    tracker.check()
    experiment_id = tracker.experiment_id("race")
    run_id = tracker.start_run(experiment_id, f"run-{me}", {"who": me}, {"p": 1})
    tracker.finish(run_id)
    print(experiment_id, run_id)
""")


def test_two_processes_on_a_new_sqlite_store_both_finish(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    procs = [subprocess.Popen([sys.executable, "-c", SCRIPT, str(ROOT), str(tmp_path), me], env=env, cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for me in ("a", "b")]
    results = [(p.wait(timeout=300), *p.communicate()) for p in procs]
    for code, out, err in results:
        assert code == 0, err[:6000]
    experiments = {out.split()[0] for _, out, _ in results}
    assert len(experiments) == 1  # one experiment, found or created once

    from mlflow import MlflowClient

    client = MlflowClient(uri)
    runs = client.search_runs([experiments.pop()])
    assert sorted(r.data.tags["who"] for r in runs) == ["a", "b"]
    assert all(r.info.status == "FINISHED" for r in runs)
    assert (tmp_path / "mlflow.db.lock").exists()  # the lock beside the store
