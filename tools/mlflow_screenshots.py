"""Screenshots of MLflow's UI on a datgpt experiment, taken by headless Chromium.

What a user sees when they open the link the runner prints, checked in a real browser:

    python tools/mlflow_screenshots.py --out /tmp/shots                        # runs a tiny demo first
    python tools/mlflow_screenshots.py --tracking-uri sqlite:///mlflow.db --experiment verdict_vs_baseline

Without ``--tracking-uri`` it runs the demo (``experiments/verdict_vs_baseline.yaml``, a few steps,
``--set train.tokens=...``) into a temporary folder and takes the two links from the runner's last
lines. It then starts ``mlflow ui`` on a free 127.0.0.1 port, waits for ``/health``, opens each page in
a new tab of one headless Chromium (as a link opened from a terminal would be), waits until the text it
expects is on the page, and writes (to ``--out``):

* ``1_runs_table.png``: the runs link the runner prints (the runs table with datgpt's shared view: the
  answer's columns beside each parent run); the tool checks that no answer column is cut or off-screen;
* ``2_chart_view.png``: the curves link the runner prints (the runs page in chart mode with datgpt's
  shared view: losses first, against tokens);
* ``3_child_run.png`` and ``4_child_run_metrics.png``: a child run's overview and its "Model metrics" tab;
* ``5_child_run_artifacts.png``: the child run's ``diagnostics/`` artifacts.

MLflow 3.17 opens its Assistant panel by itself the first time a browser opens a local MLflow UI (it
then stays as the user leaves it); the tool shoots that first page as ``0_first_visit_<name>.png``, then
closes the panel, as a user does once, before the shots above.

Needs Chromium (Debian: ``apt-get install chromium``; ``--chromium PATH`` or ``$CHROMIUM`` for another
binary) and nothing beyond the project's Python packages: Chromium is driven over the DevTools
protocol with aiohttp's websocket client. The server and the browser are stopped at the end. Exit
status 1 (and a warning) when an expected text never appeared on a page or an answer column is cut: look
at the PNG.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "experiments" / "verdict_vs_baseline.yaml"
LINK = re.compile(r"Runs in MLflow: (\S+)")
CURVES = re.compile(r"Curves in MLflow: (\S+)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_demo(folder: Path, tokens: int) -> tuple[str, str, str]:
    """Run the demo into ``folder``; returns (tracking URI, the runs page and the curves page the runner
    printed, as ``#/experiments/...``)."""
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    cmd = [sys.executable, str(REPO / "runner.py"), str(DEMO), "--no-progress", "--no-resume",
           "--set", f"train.tokens={tokens}", "--set", "train.eval_every_tokens=1024",
           "--set", f"checkpoint.dir={folder / 'checkpoints'}", "--set", "tracking.log_models=false"]
    print("running the demo:", " ".join(cmd[1:]), flush=True)
    out = subprocess.run(cmd, cwd=folder, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"the demo failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    links = []
    for pattern in (LINK, CURVES):
        found = pattern.findall(out.stdout)
        if not found:
            sys.exit(f"the runner printed no {pattern.pattern!r} link:\n{out.stdout[-3000:]}")
        print("the runner printed:", found[-1], flush=True)
        links.append(found[-1].split("/", 3)[3])  # "#/experiments/<id>/runs?..."
    return uri, links[0], links[1]


def experiment_pages(uri: str, name: str) -> tuple[str, str]:
    """The runs and curves pages the runner prints for an existing experiment."""
    from mlflow import MlflowClient

    from training.tracking import Tracker

    experiment = MlflowClient(uri).get_experiment_by_name(name)
    if experiment is None:
        sys.exit(f"no experiment {name!r} in {uri}")
    tracker = Tracker.__new__(Tracker)
    tracker.uri = "http://host"
    return (tracker.runs_url(experiment.experiment_id).split("/", 3)[3],
            tracker.curves_url(experiment.experiment_id).split("/", 3)[3])


def a_child_run(uri: str, experiment_id: str) -> str | None:
    from mlflow import MlflowClient

    from analysis import record

    runs = MlflowClient(uri).search_runs([experiment_id], f"tags.`{record.TAG_ROLE}` = '{record.ROLE_CHILD}'",
                                         order_by=["attributes.start_time DESC"], max_results=10)
    kinds = {r.data.tags.get(record.TAG_MODEL_KIND): r.info.run_id for r in runs}
    return kinds.get("ngpt") or next(iter(kinds.values()), None)


def start_ui(uri: str, port: int, cwd: Path, log: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", "127.0.0.1",
           "--port", str(port), "--workers", "1"]
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            sys.exit(f"mlflow ui exited ({proc.returncode}); see {log}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if r.status == 200:
                    return proc
        except OSError:
            time.sleep(0.5)
    stop(proc)
    sys.exit(f"mlflow ui did not answer /health within 120 s; see {log}")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)  # its own session: the server and its workers
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


# ------------------------------------------------------------------ Chromium over the DevTools protocol
class Page:
    def __init__(self, ws):
        self.ws, self.next_id = ws, 0

    async def call(self, method: str, **params):
        self.next_id += 1
        await self.ws.send_json({"id": self.next_id, "method": method, "params": params})
        while True:
            msg = await self.ws.receive_json(timeout=120)
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    async def js(self, expression: str):
        res = await self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        return res.get("result", {}).get("value")

    async def goto(self, url: str, wait_for: list[str], settle: float = 3.0, timeout: float = 60) -> bool:
        """Load ``url``; wait until the page's text holds every string of ``wait_for`` (or ``timeout``)."""
        await self.call("Page.navigate", url=url)
        deadline = time.time() + timeout
        found = False
        while time.time() < deadline:
            text = await self.js("document.body ? document.body.innerText : ''") or ""
            if all(w in text for w in wait_for):
                found = True
                break
            await asyncio.sleep(0.5)
        await asyncio.sleep(settle)  # charts draw after the text is there
        print("  at", await self.js("location.href"), flush=True)
        return found

    async def shot(self, path: Path) -> None:
        data = await self.call("Page.captureScreenshot", format="png")
        path.write_bytes(base64.b64decode(data["data"]))
        print("wrote", path, flush=True)


RUNS_TABLE = "1_runs_table.png"
#: MLflow 3.17 opens its Assistant panel (350 pixels wide) by itself the first time a browser opens a local
#: MLflow UI; a user closes it once (it stays closed). Whether it is open, and with `(true)`, close it.
ASSISTANT_CLOSE = """(click => {
  const inPanel = b => { for (let e = b; e; e = e.parentElement) { if (e === document.body) return false;
    if ((e.innerText || '').startsWith('MLflow Assistant')) return true; } return false; };
  const close = Array.from(document.querySelectorAll('button[aria-label="Close"]')).find(inPanel);
  if (close && click) close.click();
  return Boolean(close);
})"""
#: The metric columns of the runs table whose name runs past the header's right edge (MLflow cuts it with an
#: ellipsis) or that lie beyond the visible grid.
CUT_ANSWER_COLUMNS = """(() => {
  const grid = document.querySelector('.ag-body-viewport, .ag-root-wrapper').getBoundingClientRect();
  const textRight = h => { let right = 0; const walk = document.createTreeWalker(h, NodeFilter.SHOW_TEXT);
    while (walk.nextNode()) { if (!walk.currentNode.textContent.trim()) continue;
      const range = document.createRange(); range.selectNodeContents(walk.currentNode);
      right = Math.max(right, range.getBoundingClientRect().right); } return right; };
  return Array.from(document.querySelectorAll('.ag-header-cell[col-id^="metrics."]')).filter(h => {
    const cell = h.getBoundingClientRect();
    return cell.width === 0 || textRight(h) > cell.right - 4 || cell.right > grid.right + 1;
  }).map(h => h.getAttribute('col-id'));
})()"""


async def screenshots(base: str, page_link: str, curves_link: str, child: str | None, out: Path, chromium: str,
                      width: int, height: int) -> list[str]:
    import aiohttp

    from analysis import record

    profile = Path(tempfile.mkdtemp(prefix="datgpt-chromium-"))
    cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--remote-debugging-port=0",
           f"--window-size={width},{height}", "about:blank"]
    browser = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    missing = []
    try:
        port_file = profile / "DevToolsActivePort"
        for _ in range(300):
            if port_file.exists() and port_file.read_text().strip():
                break
            await asyncio.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        async with aiohttp.ClientSession() as http:
            experiment_id = re.search(r"experiments/(\d+)", page_link).group(1)
            shots = [
                (RUNS_TABLE, f"{base}/{page_link}", ["Run Name", f"{record.ANSWER_PREFIX}/"]),
                ("2_chart_view.png", f"{base}/{curves_link}", ["Losses", "val/loss", "train/loss"]),
            ]
            if child:
                run_page = f"{base}/#/experiments/{experiment_id}/runs/{child}"
                shots += [("3_child_run.png", run_page, ["Metrics"]),
                          ("4_child_run_metrics.png", f"{run_page}/model-metrics", ["Add chart"]),
                          ("5_child_run_artifacts.png", f"{run_page}/artifacts/diagnostics", ["final.json"])]
            for name, url, wait_for in shots:  # each in a new tab, as a link opened from a terminal
                async with http.put(f"http://127.0.0.1:{port}/json/new?about:blank") as r:
                    target = await r.json()
                async with http.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                    page = Page(ws)
                    await page.call("Page.enable")
                    await page.call("Emulation.setDeviceMetricsOverride", width=width, height=height,
                                    deviceScaleFactor=1, mobile=False)
                    if not await page.goto(url, wait_for):
                        missing.append(f"{name}: {wait_for} not on the page")
                    if await page.js(f"{ASSISTANT_CLOSE}(false)"):  # open on a browser's first visit only
                        await page.shot(out / f"0_first_visit_{name}")
                        await page.js(f"{ASSISTANT_CLOSE}(true)")
                        await asyncio.sleep(2)
                    if name == RUNS_TABLE:
                        missing += [f"{name}: the answer column {c} is cut or off-screen"
                                    for c in await page.js(CUT_ANSWER_COLUMNS)]
                    await page.shot(out / name)
                async with http.get(f"http://127.0.0.1:{port}/json/close/{target['id']}") as r:
                    await r.read()
    finally:
        browser.terminate()
        try:
            browser.wait(10)
        except subprocess.TimeoutExpired:
            browser.kill()
        shutil.rmtree(profile, ignore_errors=True)
    return missing


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("mlflow-screenshots"), help="folder for the PNGs")
    p.add_argument("--tracking-uri", help="an existing store (default: run the demo into a temporary folder)")
    p.add_argument("--experiment", default="verdict_vs_baseline", help="experiment name with --tracking-uri")
    p.add_argument("--tokens", type=int, default=8192, help="train.tokens of the demo run")
    p.add_argument("--chromium", default=os.environ.get("CHROMIUM") or shutil.which("chromium")
                   or shutil.which("chromium-browser") or "chromium")
    p.add_argument("--size", default="1600x1000", help="viewport WIDTHxHEIGHT")
    p.add_argument("--keep", action="store_true", help="keep the demo's temporary folder")
    args = p.parse_args(argv)
    sys.path.insert(0, str(REPO))
    width, height = (int(v) for v in args.size.split("x"))
    args.out.mkdir(parents=True, exist_ok=True)

    folder = Path(tempfile.mkdtemp(prefix="datgpt-mlflow-ui-"))
    server = None
    try:
        if args.tracking_uri:
            uri = args.tracking_uri
            page_link, curves_link = experiment_pages(uri, args.experiment)
            cwd = Path.cwd()
        else:
            uri, page_link, curves_link = run_demo(folder, args.tokens)
            cwd = folder
        experiment_id = re.search(r"experiments/(\d+)", page_link).group(1)
        child = a_child_run(uri, experiment_id)
        port = free_port()
        server = start_ui(uri, port, cwd, args.out / "mlflow-ui.log")
        missing = asyncio.run(screenshots(f"http://127.0.0.1:{port}", page_link, curves_link, child, args.out,
                                          args.chromium, width, height))
    finally:
        if server is not None:
            stop(server)
        if args.keep:
            print("demo folder kept:", folder)
        else:
            shutil.rmtree(folder, ignore_errors=True)
    for line in missing:
        print("warning:", line, file=sys.stderr)
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
