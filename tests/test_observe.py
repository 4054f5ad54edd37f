"""Watching a real job run: Flower in headless Chromium, Prometheus metrics from Flower and from
batchq, `status --watch`, `submit --wait` and `report`, all on one job over real services."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import BATCHQ, IN_CI, batchq, free_port, scrape, stored_status, wait_for

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
# Where the README's screenshot comes from: `BATCHQ_SCREENSHOTS=tests/screenshots pytest
# tests/test_observe.py` saves Flower's task page there.
SCREENSHOTS = os.environ.get("BATCHQ_SCREENSHOTS")

pytestmark = [pytest.mark.services, pytest.mark.e2e]


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read().decode()


def started(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen([BATCHQ, *args], env=env, stdout=log.open("w"),
                            stderr=subprocess.STDOUT, start_new_session=True)


def up(url: str) -> bool:
    try:
        get(url)
        return True
    except OSError:
        return False


@pytest.fixture
def browser(tmp_path):
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        if IN_CI:
            pytest.fail("Chromium is not installed (apt-get install chromium chromium-driver)")
        pytest.skip("Chromium is not installed")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--window-size=1600,720",
                 f"--user-data-dir={tmp_path / 'chromium'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def task_rows(driver) -> list[str]:
    from selenium.webdriver.common.by import By

    rows = driver.find_elements(By.CSS_SELECTOR, "#tasks-table tbody tr")
    return [row.text for row in rows if "No tasks" not in row.text]


def search_tasks(driver, flower: str, query: str) -> None:
    """Flower's task page, searched the way a person would: typing into its search box."""
    from selenium.webdriver.common.by import By

    driver.get(f"{flower}/tasks")
    box = wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, "input[type=search]"),
                   timeout=20, what="Flower's task search box")[0]
    box.clear()
    box.send_keys(query)


def test_a_job_seen_in_flower_metrics_watch_and_report(services_env, tiny_model, tmp_path,
                                                       start_worker, browser):
    env = {**services_env, "BATCHQ_CHUNK_SIZE": "8"}
    flower_port, metrics_port = free_port(), free_port()
    flower_url = f"http://127.0.0.1:{flower_port}"
    metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
    flower = started(["flower", "--port", str(flower_port)], env, tmp_path / "flower.log")
    metrics = started(["metrics", "--port", str(metrics_port)], env, tmp_path / "metrics.log")
    watch = None
    try:
        wait_for(lambda: up(f"{flower_url}/healthcheck"), timeout=60, what="Flower")
        wait_for(lambda: up(metrics_url), timeout=60, what="batchq metrics")
        # Slow batches of 4 rows, two per chunk. The worker holds its second batch until the
        # test has seen the first chunk mid-way: however loaded the machine, the job is watched
        # while it runs, not after.
        hold = tmp_path / "hold"
        hold.touch()
        start_worker("--model", str(tiny_model), "--max-batch-rows", "4", env=env,
                     faults=f"slow:0.3,hold:{hold}")
        # The database is shared with other tests: metrics are compared with this baseline.
        before = scrape(metrics_url)
        data = tmp_path / "p.jsonl"
        data.write_text("".join(json.dumps({"custom_id": f"r{i}", "prompt": f"count to {i}"})
                                + "\n" for i in range(40)))
        submitted = batchq("submit", str(data), "--model", str(tiny_model), "--name", "watched",
                           "--max-new-tokens", "6", env=env)
        assert submitted.returncode == 0, submitted.stderr
        job = submitted.stdout.strip()
        watch_log = tmp_path / "watch.log"
        watch = subprocess.Popen([BATCHQ, "status", "--watch", "--interval", "0.3"], env=env,
                                 stdout=watch_log.open("w"), stderr=subprocess.STDOUT)

        # While it runs: Flower shows a chunk's progress, batchq's metrics its pending lines.
        def progress_in_flower():
            search_tasks(browser, flower_url, f"job={job}")
            time.sleep(0.8)
            return [r for r in task_rows(browser) if "PROGRESS" in r and "lines done" in r]

        running = wait_for(progress_in_flower, timeout=60, interval=0.2,
                           what="a chunk in PROGRESS in Flower")
        assert re.search(rf"job={job} chunk=\d/5 lines=\d+-\d+ variant=local-tiny-qwen2-\w+/none",
                         running[0])
        assert re.search(r"\d/8 lines done \(0 failed\), \d+ tokens out", running[0])
        variant = re.search(r"variant=(\S+)", running[0]).group(1)

        def lines(status: str) -> str:
            return f'batchq_lines{{status="{status}",variant="{variant}"}}'

        during = scrape(metrics_url)
        assert during[lines("pending")] - before.get(lines("pending"), 0) > 0
        assert during[f'batchq_oldest_pending_line_age_seconds{{variant="{variant}"}}'] > 0
        assert during['batchq_jobs{status="running"}'] - before['batchq_jobs{status="running"}'] == 1
        # Five chunks, one held by the only worker: the rest wait on the broker queue.
        assert 0 <= during[f'batchq_queue_depth{{variant="{variant}"}}'] <= 4
        hold.unlink()  # let it run on

        assert batchq("status", job, "--json", env=env).returncode == 0
        wait_for(lambda: stored_status(env, job) == "completed", timeout=120,
                 what="the job to complete")
        assert json.loads(batchq("status", job, "--json", env=env).stdout)[
            "status"] == "completed"

        # Flower's search finds all five chunk tasks of this job, each with its summary.
        def all_chunks_succeeded():
            search_tasks(browser, flower_url, f"job={job}")
            time.sleep(0.8)
            rows = task_rows(browser)
            return rows if len(rows) == 5 and all("SUCCESS" in r for r in rows) else None

        rows = wait_for(all_chunks_succeeded, timeout=30, interval=0.2, what="5 chunks in Flower")
        assert sorted(re.search(r"chunk=(\d)/5", r).group(1) for r in rows) == list("12345")
        for row in rows:
            assert f"job={job}" in row and "'succeeded': 8" in row and "'failed': 0" in row
            assert "count to" not in row  # never prompt text
        browser.save_screenshot(str(tmp_path / "flower-tasks.png"))
        if SCREENSHOTS:
            shutil.copy(tmp_path / "flower-tasks.png", SCREENSHOTS)

        # Flower's own Prometheus metrics count the chunk tasks' events, progress included.
        flower_metrics = scrape(f"{flower_url}/metrics")
        events = {k: v for k, v in flower_metrics.items()
                  if k.startswith("flower_events_total") and "batchq.run_chunk" in k}
        assert sum(v for k, v in events.items() if 'type="task-succeeded"' in k) >= 5
        assert sum(v for k, v in events.items() if 'type="task-progress"' in k) >= 10

        after = scrape(metrics_url)

        def grew(name: str) -> float:
            return after[name] - before.get(name, 0)

        assert grew(lines("succeeded")) == 40
        assert grew(lines("pending")) == 0
        assert grew(lines("failed")) == 0
        out = json.loads(batchq("status", job, "--json", env=env).stdout)["metrics"]
        assert grew(f'batchq_completion_tokens_total{{variant="{variant}"}}') == out["completion_tokens"] > 0
        assert grew(f'batchq_prompt_tokens_total{{variant="{variant}"}}') == out["prompt_tokens"] > 0
        assert after[f'batchq_tokens_per_second{{variant="{variant}"}}'] > 0
        assert grew('batchq_jobs{status="completed"}') == 1
        assert after["batchq_database_up"] == after["batchq_broker_up"] == 1

        # The watch drew the job's bar as it moved, and its final state; Ctrl-C ends it cleanly.
        wait_for(lambda: "completed" in watch_log.read_text(), timeout=10, what="final bar")
        watch.send_signal(signal.SIGINT)
        assert watch.wait(20) == 0
        bars = [line for line in watch_log.read_text().splitlines() if line.startswith(job[:12])]
        assert any(" running " in b and "ETA" in b for b in bars), bars
        assert re.fullmatch(rf"{job[:12]} completed  \[#{{24}}\]  40/40 100%  0 failed  "
                            rf"\d+ tok/s  took \d+s  {re.escape(variant)}  \(watched\)", bars[-1])
        dones = [int(re.search(r"\] +(\d+)/40", b).group(1)) for b in bars]
        assert dones == sorted(dones) and len(set(dones)) >= 3  # it moved, and never back

        # submit --wait draws the same bar, on stderr, ending at 100%.
        waited = batchq("submit", "-", "--model", str(tiny_model), "--max-new-tokens", "2",
                        "--wait", env=env, input='{"prompt": "hi"}\n{"prompt": "ho"}\n')
        assert waited.returncode == 0, waited.stderr
        assert re.search(r"completed  \[#{24}\]  2/2 100%  0 failed", waited.stderr.splitlines()[-1])

        # The report: a PNG, and an HTML page with the numbers.
        png, page = tmp_path / "job.png", tmp_path / "job.html"
        assert batchq("report", job[:8], "-o", str(png), env=env).returncode == 0
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
        made = batchq("report", job, "-o", str(page), env=env)
        assert made.returncode == 0 and "10 batches" in made.stderr, made.stderr
        text = page.read_text()
        assert f"job {job}" in text and "<svg" in text
        assert "<th>lines</th><td>40 total, 40 succeeded, 0 failed, 0 cancelled</td>" in text
        for title in ("Throughput over time", "Batch latency", "Padding efficiency",
                      "Share per worker"):
            assert title in text
    finally:
        for process in (flower, metrics, watch):
            if process is not None and process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM) if process is not watch else process.kill()
                process.wait(10)
