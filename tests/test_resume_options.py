"""The resume options a user types: --no-resume, --resume PARENT_RUN_ID | FOLDER, --force."""

from __future__ import annotations

import signal

from test_resume import finish, start, wait_for_checkpoint, write_yaml

from analysis import record

SHORT = ("--arms", "gpt", "--set", "train.tokens=3072")  # 12 steps of one arm


def _runs(folder):
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{folder}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("tiny_resume").experiment_id])
    parents = {r.info.run_id: r.info.status for r in runs if r.data.tags[record.TAG_ROLE] == record.ROLE_PARENT}
    children = {r.info.run_id: (r.data.tags[record.TAG_PARENT], r.info.status) for r in runs
                if r.data.tags[record.TAG_ROLE] == record.ROLE_CHILD}
    return client, parents, children


def test_no_resume_then_resume_by_folder_and_by_id_with_force(tmp_path, data_dir):
    write_yaml(tmp_path)
    proc = start(tmp_path, *SHORT)
    wait_for_checkpoint(tmp_path, "gpt", 3, proc)
    proc.send_signal(signal.SIGTERM)
    assert finish(proc)[0] == 128 + signal.SIGTERM
    _, parents, _ = _runs(tmp_path)
    (killed_id,) = parents
    killed_folder = tmp_path / "checkpoints" / "tiny_resume" / killed_id

    # --no-resume: a new invocation from step 0, the killed one left as it is
    code, out, err = finish(start(tmp_path, *SHORT, "--no-resume"))
    assert code == 0, err[-3000:]
    assert "resuming" not in out
    _, parents, children = _runs(tmp_path)
    assert len(parents) == 2 and parents[killed_id] == "KILLED"
    (fresh_id,) = set(parents) - {killed_id}
    assert parents[fresh_id] == "FINISHED"
    assert (killed_folder / "invocation.json").is_file()

    # --resume FOLDER under another config: refused, one line naming the checkpoint
    changed = (*SHORT, "--set", "optim.lr=1e-3")
    code, out, err = finish(start(tmp_path, *changed, "--resume", str(killed_folder)))
    assert code == 2 and err.count("\n") == 1 and "was written under another config" in err
    assert str(killed_folder) in err and "--force" in err

    # --resume PARENT_RUN_ID --force: continues the killed invocation, in its own runs, under the new config
    code, out, err = finish(start(tmp_path, *changed, "--resume", killed_id, "--force"))
    assert code == 0, err[-3000:]
    assert f"resuming parent run {killed_id}" in out and "gpt seed 0: resuming at step" in out
    client, parents, children = _runs(tmp_path)
    assert parents == {killed_id: "FINISHED", fresh_id: "FINISHED"}
    resumed = [run_id for run_id, (parent, _) in children.items() if parent == killed_id]
    assert len(resumed) == 1 and children[resumed[0]][1] == "FINISHED"  # the same child run, finished
    steps = {m.step for m in client.get_metric_history(resumed[0], record.TRAIN_LOSS)}
    assert steps == set(range(1, 13))  # one curve over the whole run, no step twice or missing
