"""local-airflow.sh: the demo, real local services driven through the REST API and a browser."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from airflow_rest import AirflowApi
from demo_world import settings_env
from helpers import REPO, free_port, make_bag_zip, make_world

from glacier_sync.records.progress import ProgressStore

pytestmark = pytest.mark.services
SCRIPT = REPO / "local-airflow.sh"
ARTIFACTS = REPO / "test-artifacts"
# Users of the services beside the admin "tester" (password "<name>-pw-123"), by role.
ROLES = (("olga", "op"), ("vera", "viewer"))


def script_env(tmp: Path, **extra) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GLACIER_SYNC_", "AIRFLOW"))}
    env.update(
        {
            "AIRFLOW_HOME": str(tmp / "airflow-home"),
            "DEMO_DIR": str(tmp / "demo"),
            "DEMO_MOTO_PORT": str(free_port()),
            "AIRFLOW_PORT": str(free_port()),
            "WORKER_LOG_PORT": str(free_port()),
            "TRIGGER_LOG_PORT": str(free_port()),
        }
    )
    env.update(extra)
    return env


def run(env, *args, timeout=600):
    return subprocess.run(
        ["bash", str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=timeout
    )


def pids(home: Path) -> list[int]:
    return [int(p.read_text()) for p in (home / "run").glob("*.pid")]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return (
        Path(f"/proc/{pid}").exists()
        and "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]
    )


def test_help_lists_every_command(tmp_path):
    result = run(script_env(tmp_path), "-h")
    assert result.returncode == 0
    for text in (
        "demo [--serve] [--clean]",
        "-r ",
        "-a USER PASSWORD EMAIL",
        "-w -u | -w -d",
        "-s -u | -s -d",
        "stop",
        "status",
        "logs",
    ):
        assert text in result.stdout
    bad = run(script_env(tmp_path), "-w", "-x")
    assert bad.returncode == 1 and "-u (start) or -d (stop)" in bad.stderr


def test_demo_end_to_end_rerun_and_clean(tmp_path):
    env = script_env(tmp_path)
    first = run(env, "demo")
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "work W1NLM4700: synced" in first.stdout
    assert "seconds per phase: download" in first.stdout
    archived = tmp_path / "demo" / "archive" / "Archive0" / "00" / "W1NLM4700"
    assert (archived / "sources" / "བསྟན་འགྱུར།.txt").is_file()
    assert (archived / "W1NLM4700.bag" / "manifest-sha512.txt").is_file()
    second = run(env, "demo")
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "work W1NLM4700: synced" in second.stdout
    assert not [p for p in pids(tmp_path / "airflow-home") if alive(p)]
    clean = run(env, "demo", "--clean")
    assert clean.returncode == 0 and not (tmp_path / "demo").exists()


def test_demo_reports_the_failing_step(tmp_path):
    env = script_env(tmp_path)
    busy = subprocess.Popen(
        [
            "python3",
            "-c",
            "import socket,time; s=socket.socket(); "
            f"s.bind(('127.0.0.1', {env['DEMO_MOTO_PORT']})); s.listen(); "
            "time.sleep(120)",
        ]
    )
    try:
        result = run(env, "demo", timeout=300)
    finally:
        busy.kill()
    assert result.returncode != 0
    assert "demo failed at step: start the moto S3/SQS server" in result.stderr


def test_reset_an_external_metadata_database(tmp_path):
    """AIRFLOW_DB_URL puts the metadata on PostgreSQL (as the Compose stack has it): -r resets
    that database, never printing its password, and no SQLite file appears."""
    import sqlalchemy

    name = f"local_airflow_{os.getpid()}"
    admin = sqlalchemy.create_engine(
        "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres", isolation_level="AUTOCOMMIT"
    )
    with admin.connect() as conn:
        conn.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
    url = f"postgresql+psycopg2://postgres:never-shown-7@127.0.0.1:5432/{name}"
    env = script_env(tmp_path, AIRFLOW_DB_URL=url)
    try:
        first = run(env, "-r", timeout=300)
        assert first.returncode == 0, first.stderr
        assert "postgres:***@127.0.0.1" in first.stdout
        assert "never-shown-7" not in first.stdout + first.stderr
        database = sqlalchemy.create_engine(url)
        with database.begin() as conn:
            conn.execute(
                sqlalchemy.text(
                    "INSERT INTO variable (key, val, is_encrypted) VALUES ('probe', '1', false)"
                )
            )
        again = run(env, "-r", timeout=300)
        assert again.returncode == 0, again.stderr
        with database.connect() as conn:
            left = conn.execute(sqlalchemy.text("SELECT count(*) FROM variable")).scalar()
        assert left == 0, "the reset emptied the external database"
        assert not (tmp_path / "airflow-home" / "airflow.db").exists()
        database.dispose()
    finally:
        with admin.connect() as conn:
            conn.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="module")
def services(moto_endpoint, tmp_path_factory):
    """UI + scheduler + dag-processor + triggerer from local-airflow.sh, against moto."""
    tmp = tmp_path_factory.mktemp("local-airflow")
    world = make_world(moto_endpoint)
    data, archive = tmp / "data", tmp / "archive"
    archive.mkdir()
    settings = settings_env(world, data, archive)
    settings.update(
        GLACIER_SYNC_MAX_ACTIVE_RUNS="2",
        # These tests trigger sqs_scheduled_dag by hand; the event-driven twin (tested in
        # test_event_driven.py) stays paused so that it does not take their works.
        GLACIER_SYNC_EVENT_DRIVEN="false",
        GLACIER_SYNC_POLL_RETRIES="0",
        GLACIER_SYNC_TASK_RETRY_DELAY_SECONDS="3",
        # No file there until test_killed_sync_task_is_finished_once_by_its_retry writes one.
        GLACIER_SYNC_FAULT_FILE=str(tmp / "fault"),
    )
    statsd = StatsdListener()
    settings.update(statsd.settings())
    with statsd, running_services(tmp, settings) as (env, api):
        api.wait_for_dag("sqs_scheduled_dag")
        api.unpause("sqs_scheduled_dag")
        yield {
            "api": api,
            "world": world,
            "data": data,
            "archive": archive,
            "env": env,
            "home": tmp / "airflow-home",
            "tmp": tmp,
            "statsd": statsd,
        }


class StatsdListener:
    """A UDP StatsD listener on loopback collecting every line it receives (a thread)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.5)
        self.lines: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._collect, daemon=True)

    def settings(self) -> dict[str, str]:
        """Airflow's own StatsD metrics and the pipeline's, both sent here."""
        port = str(self.sock.getsockname()[1])
        return {
            "AIRFLOW__METRICS__STATSD_ON": "True",
            "AIRFLOW__METRICS__STATSD_HOST": "127.0.0.1",
            "AIRFLOW__METRICS__STATSD_PORT": port,
            "AIRFLOW__METRICS__STATSD_PREFIX": "airflow",
            "GLACIER_SYNC_METRICS_STATSD_HOST": "127.0.0.1",
            "GLACIER_SYNC_METRICS_STATSD_PORT": port,
        }

    def _collect(self) -> None:
        while not self._stop.is_set():
            try:
                self.lines.extend(self.sock.recv(65535).decode().splitlines())
            except (TimeoutError, OSError):
                continue

    def __enter__(self) -> StatsdListener:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()


@contextmanager
def running_services(tmp: Path, settings: dict[str, str]) -> Iterator[tuple[dict, AirflowApi]]:
    """local-airflow.sh's UI, scheduler, dag-processor and triggerer on ``settings`` (a user
    "tester"); every service log printed on failure; stopped after, leaving no process."""
    env_file = tmp / "glacier-sync.env"
    env_file.write_text("".join(f"export {k}='{v}'\n" for k, v in settings.items()))
    env = script_env(tmp, GLACIER_SYNC_ENV_FILE=str(env_file))
    home = tmp / "airflow-home"
    try:
        for args in (
            ["-r"],
            ["-a", "tester", "tester-pw-123", "tester@example.org"],
            *(["-a", name, f"{name}-pw-123", f"{name}@example.org", role] for name, role in ROLES),
            ["-w", "-u"],
            ["-s", "-u"],
        ):
            result = run(env, *args)
            assert result.returncode == 0, (args, result.stdout, result.stderr)
        yield env, AirflowApi(f"http://127.0.0.1:{env['AIRFLOW_PORT']}", "tester", "tester-pw-123")
    except BaseException:
        for log in sorted((home / "logs" / "services").glob("*.log")):
            print(f"===== {log.name}\n{log.read_text()[-4000:]}")
        raise
    finally:
        recorded = pids(home)
        stop = run(env, "stop")
        assert stop.returncode == 0, stop.stderr
        assert recorded and not [p for p in recorded if alive(p)], "stop leaves no process"


def seed(services, work_ids) -> None:
    """Restore each work on the services' moto world (its events land in the queue)."""
    for work_id in work_ids:
        zip_path = make_bag_zip(services["tmp"] / "bags", work_id)
        key = f"Archive5/{work_id[-2:]}/{work_id}/{work_id}.bag.zip"
        services["world"].upload_archived(zip_path, key)
        services["world"].restore(key)


def rows_by_work(services):
    store = ProgressStore(f"sqlite:///{services['data']}/progress.sqlite")
    return {r.work_id: r for r in store.find()}


def test_rest_trigger_carries_a_restore_to_the_archive(services):
    seed(services, ["W1REST01"])
    api = services["api"]
    run_id = api.trigger("sqs_scheduled_dag")
    result = api.wait_for_run("sqs_scheduled_dag", run_id)
    assert result["state"] == "success", api.task_states("sqs_scheduled_dag", run_id)
    assert api.task_states("sqs_scheduled_dag", run_id)[("sync_debagged", 0)] == "success"
    assert (services["archive"] / "Archive5" / "01" / "W1REST01" / "images").is_dir()
    assert rows_by_work(services)["W1REST01"].state == "synced"


def test_airflow_and_pipeline_metrics_arrive_at_statsd(services):
    """Both Airflow's own metrics and the pipeline's reach a real StatsD listener."""
    seed(services, ["W1STATS1"])
    api = services["api"]
    run_id = api.trigger("sqs_scheduled_dag")
    assert api.wait_for_run("sqs_scheduled_dag", run_id)["state"] == "success"
    deadline = time.monotonic() + 60
    while True:
        names = {line.split(":", 1)[0] for line in list(services["statsd"].lines)}
        ours = {"glacier_sync.phase.sync.works", "glacier_sync.poll.new_works"}
        airflow = {n for n in names if n.startswith("airflow.")}
        if ours <= names and any(n.startswith("airflow.ti.finish") for n in airflow):
            break
        assert time.monotonic() < deadline, sorted(names)[:80]
        time.sleep(2)


def test_two_runs_side_by_side_archive_each_work_once(services):
    works = [f"W1PAR{i:03d}" for i in range(1, 7)]
    seed(services, works)
    api = services["api"]
    run_ids = [api.trigger("sqs_scheduled_dag"), api.trigger("sqs_scheduled_dag")]
    results = [api.wait_for_run("sqs_scheduled_dag", r) for r in run_ids]
    assert [r["state"] for r in results] == ["success", "success"]
    first, second = results
    assert first["start_date"] < second["end_date"] and second["start_date"] < first["end_date"]
    rows = rows_by_work(services)
    for work_id in works:
        row = rows[work_id]
        assert row.state == "synced"
        assert [h["event"] for h in row.history].count("sync done") == 1, row.history
        assert (services["archive"] / "Archive5" / work_id[-2:] / work_id / "images").is_dir()


def test_killed_sync_task_is_finished_once_by_its_retry(services):
    """kill -9 of the sync_debagged task process after the archive copy is in place and before
    the sync is recorded: the task's retry finds the identical copy and records it, once."""
    seed(services, ["W1KILL01"])
    fault = services["tmp"] / "fault"
    fault.write_text("sync:after-script 1 self\n")
    api = services["api"]
    run_id = api.trigger("sqs_scheduled_dag")
    result = api.wait_for_run("sqs_scheduled_dag", run_id)
    assert Path(f"{fault}.fired").exists(), "the task process was killed at the fault point"
    assert result["state"] == "success", api.task_states("sqs_scheduled_dag", run_id)
    tries = api.task_tries("sqs_scheduled_dag", run_id, "sync_debagged", 0)
    assert [t["state"] for t in tries] == ["failed", "success"], tries
    row = rows_by_work(services)["W1KILL01"]
    assert row.state == "synced" and row.cleaned_at is not None
    assert [h["event"] for h in row.history].count("sync done") == 1, row.history
    parent = services["archive"] / "Archive5" / "01"
    assert not [p.name for p in parent.iterdir() if p.name.startswith(".")], "no staging left"
    assert (parent / "W1KILL01" / "images" / "I1_0001.tif").is_file()
    assert not (services["data"] / "work" / "W1KILL01").exists()


@contextmanager
def signed_in_browser(services, name: str, user: str = "tester"):
    """Headless chromium signed in to the services' UI as ``user`` ("tester", or one of
    ROLES); a screenshot of its last page goes to test-artifacts/<name>-last-page.png."""
    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver_path):
        if os.environ.get("CI"):
            pytest.fail(
                "chromium and chromium-driver must be installed (scripts/run-tests.sh "
                "installs them)"
            )
        pytest.skip("Debian's chromium and chromium-driver are not installed")
    from selenium import webdriver
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1400,1000",
        f"--user-data-dir={services['tmp'] / f'chromium-{name}'}",
    ):
        options.add_argument(flag)
    os.environ["SE_OFFLINE"] = "true"
    browser = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    _reload_after_network_changes(browser)
    ARTIFACTS.mkdir(exist_ok=True)
    try:
        # A React page re-renders under the test: an element found may be stale a moment later.
        wait = WebDriverWait(browser, 60, ignored_exceptions=(StaleElementReferenceException,))
        browser.get(services["api"].base_url + "/")
        wait.until(ec.presence_of_element_located((By.NAME, "username")))
        browser.find_element(By.NAME, "username").send_keys(user)
        browser.find_element(By.NAME, "password").send_keys(f"{user}-pw-123")
        browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        wait.until(lambda b: "/auth/login" not in b.current_url)
        yield browser, wait
    finally:
        browser.save_screenshot(str(ARTIFACTS / f"{name}-last-page.png"))
        browser.quit()


def _reload_after_network_changes(browser, tries: int = 5) -> None:
    """Chromium aborts a page load with ERR_NETWORK_CHANGED when a network interface comes or
    goes, as Docker's bridges do while the Compose tests run beside these: ``browser.get``
    loads the page again then (a few times), never a test failed by a neighbour's network."""
    plain_get = browser.get

    def get(url: str) -> None:
        for _ in range(tries):
            plain_get(url)
            text = browser.execute_script("return document.body ? document.body.innerText : ''")
            if "ERR_NETWORK_CHANGED" not in (text or ""):
                return
            time.sleep(1)
        raise AssertionError(f"{url}: Chromium said ERR_NETWORK_CHANGED {tries} times in a row")

    browser.get = get


def _table_rows(browser) -> list[str]:
    """Each table body row's text (read in one script call: the page re-renders as it loads)."""
    return browser.execute_script(
        "return Array.from(document.querySelectorAll('tbody tr')).map(r => r.innerText)"
    )


def test_browser_login_and_finished_run(services):
    seed(services, ["W1WEB01"])
    api = services["api"]
    run_id = api.trigger("sqs_scheduled_dag")
    assert api.wait_for_run("sqs_scheduled_dag", run_id)["state"] == "success"
    base = api.base_url
    with signed_in_browser(services, "finished-run") as (browser, wait):
        browser.get(f"{base}/dags/sqs_scheduled_dag/runs/{run_id}")
        tasks = [
            "get_restored_object_messages",
            "download_from_messages",
            "debag_downloads",
            "sync_debagged",
        ]

        def task_rows(b) -> dict[str, str]:
            """Task id -> its row's text, from the run's Task Instances table."""
            table = b.execute_script(
                "return Array.from(document.querySelectorAll('tbody tr')).map("
                "r => Array.from(r.querySelectorAll('td')).map(c => c.innerText))"
            )
            rows = {}
            for cells in table:
                cells = [c.replace("\n", "") for c in cells]
                for task_id in set(tasks) & set(cells):
                    rows[task_id] = " ".join(cells)
            return rows if len(rows) == len(tasks) else False

        rows = wait.until(task_rows)
        browser.save_screenshot(str(ARTIFACTS / "sqs_scheduled_dag-run.png"))
        for task_id, text in rows.items():
            assert "Success" in text, f"{task_id}: {text}"
        page = browser.execute_script("return document.body.innerText")
        assert run_id in page and "Success" in page.split(run_id)[-1][:200], page[:2000]

        # The operator finds the work by its id: each mapped instance is labelled with it.
        browser.get(f"{base}/dags/sqs_scheduled_dag/runs/{run_id}/tasks/sync_debagged/mapped")
        row = wait.until(lambda b: next((r for r in _table_rows(b) if "W1WEB01" in r), False))
        browser.save_screenshot(str(ARTIFACTS / "sqs_scheduled_dag-work-W1WEB01.png"))
        assert "Success" in row, row


def _click_button(browser, css: str, text: str, last: bool = False) -> bool:
    """Click the first (or ``last``) element matching ``css`` that reads ``text``; False while
    there is none, or while the page re-renders it under our feet (a stale element)."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By

    try:
        found = [e for e in browser.find_elements(By.CSS_SELECTOR, css) if e.text.strip() == text]
        if not found:
            return False
        found[-1 if last else 0].click()
        return True
    except StaleElementReferenceException:
        return False


def test_browser_restore_from_request_to_archive(services):
    """docs/operations.md, "A restore from request to archive", done in the UI: the trigger
    form of restore_request_dag asks for the restore; when it completes, the restore run
    archives the work, which the operator finds by its id, and the archive's asset shows it."""
    from selenium.webdriver.common.by import By

    work = "W1ASKUI"
    key = f"Archive5/UI/{work}/{work}.bag.zip"
    services["world"].upload_archived(make_bag_zip(services["tmp"] / "bags", work), key)
    api, base = services["api"], services["api"].base_url
    api.wait_for_dag("restore_request_dag")
    api.unpause("restore_request_dag")
    before = {r["dag_run_id"] for r in api.runs("restore_request_dag")}
    with signed_in_browser(services, "request-restore") as (browser, wait):
        browser.get(f"{base}/dags/restore_request_dag")
        wait.until(lambda b: _click_button(b, "button", "Trigger"))
        works = wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "textarea") or False)[0]
        works.send_keys(key)
        browser.save_screenshot(str(ARTIFACTS / "restore_request_dag-form.png"))
        wait.until(lambda b: _click_button(b, "[role=dialog] button", "Trigger", last=True))
        deadline = time.monotonic() + 60
        while not ({r["dag_run_id"] for r in api.runs("restore_request_dag")} - before):
            assert time.monotonic() < deadline, "the form started no run"
            time.sleep(1)
        [run_id] = {r["dag_run_id"] for r in api.runs("restore_request_dag")} - before
        assert api.wait_for_run("restore_request_dag", run_id)["state"] == "success"
        assert rows_by_work(services)[work].state == "requested"

        # Hours later S3 completes the restore (moto: on the next read of its status).
        world = services["world"]
        world.client("s3").head_object(Bucket=world.bucket, Key=key)
        restore_run = api.trigger("sqs_scheduled_dag")
        assert api.wait_for_run("sqs_scheduled_dag", restore_run)["state"] == "success"
        assert rows_by_work(services)[work].state == "synced"
        browser.get(f"{base}/dags/sqs_scheduled_dag/runs/{restore_run}/tasks/sync_debagged/mapped")
        row = wait.until(lambda b: next((r for r in _table_rows(b) if work in r), False))
        assert "Success" in row, row
        browser.save_screenshot(str(ARTIFACTS / "restore-archived-work.png"))

        browser.get(f"{base}/assets")
        wait.until(
            lambda b: (
                "glacier_sync_archive_dev" in b.execute_script("return document.body.innerText")
            )
        )
        browser.save_screenshot(str(ARTIFACTS / "assets-archive.png"))


def _works_api(services, user: str) -> AirflowApi:
    return AirflowApi(services["api"].base_url, user, f"{user}-pw-123")


def _run_in_message(wait, said: str) -> str:
    """The run id the Works view's message names once it says ``said`` ("...; run ID of ...")."""
    from selenium.webdriver.common.by import By

    message = wait.until(lambda b: said in (text := b.find_element(By.ID, "message").text) and text)
    return message.split("; run ")[1].split(" of ")[0]


def _status_of(call) -> int:
    try:
        call()
    except urllib.error.HTTPError as exc:
        return exc.code
    return 200


def test_works_view_an_op_retries_a_held_work_a_viewer_only_looks(services):
    """docs/operations.md, "The Works view": a work held for attention (its object was gone
    when the run came) shows its phase, reason and fix in the view; a Viewer sees it with no
    Retry button and the API refuses the Viewer's retry (403); once the object is back, an Op
    retries it from the view, the run it starts archives it, the work's history names the Op,
    and the search finds the work by part of its id."""
    from selenium.webdriver.common.by import By

    work, world, api = "W1VIEWUI", services["world"], services["api"]
    key = f"Archive5/VW/{work}/{work}.bag.zip"
    zip_path = make_bag_zip(services["tmp"] / "bags", work)
    world.upload_archived(zip_path, key)
    world.restore(key)
    s3 = world.client("s3")
    s3.delete_object(Bucket=world.bucket, Key=key)  # gone before the run: held, permanently
    held_run = api.trigger("sqs_scheduled_dag")
    assert api.wait_for_run("sqs_scheduled_dag", held_run)["state"] == "failed"
    assert rows_by_work(services)[work].needs_attention

    viewer = _works_api(services, "vera")
    board = viewer._call("GET", "/glacier-works/api/board")
    [held] = [w for w in board["attention"] if w["work_id"] == work]
    assert held["phase"] == "download" and "does not exist" in held["reason"]
    assert f"`glacier-sync retry {work}`" in held["fix"]
    assert held_run in [run["dag_run_id"] for run in held["runs"]]
    assert board["may_retry"] is False and board["user"] == "vera"
    refused = _status_of(lambda: viewer._call("POST", f"/glacier-works/api/works/{work}/retry"))
    assert refused == 403
    assert rows_by_work(services)[work].needs_attention, "the refused retry changed nothing"
    anonymous = urllib.request.Request(api.base_url + "/glacier-works/api/board")
    assert _status_of(lambda: urllib.request.urlopen(anonymous, timeout=30)) == 401

    with signed_in_browser(services, "works-viewer", user="vera") as (browser, wait):
        browser.get(f"{api.base_url}/glacier-works/")
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, f"#attention tr[data-work={work}]"))
        assert not browser.find_elements(By.CSS_SELECTOR, "button.retry"), "no button for a Viewer"
        browser.get(f"{api.base_url}/glacier-works/?q={work}")  # a notice's link
        wait.until(
            lambda b: b.find_elements(By.CSS_SELECTOR, f"#search-results tr[data-work={work}]")
        )
        assert not browser.find_elements(By.CSS_SELECTOR, "button.restore"), "none for a Viewer"

    s3.upload_file(str(zip_path), world.bucket, key)  # the operator puts the object back
    with signed_in_browser(services, "works-op", user="olga") as (browser, wait):
        browser.get(f"{api.base_url}/plugin/works")  # the view, as the UI's navigation shows it
        frame = wait.until(lambda b: b.find_elements(By.TAG_NAME, "iframe") or False)[0]
        assert frame.get_attribute("src").endswith("/glacier-works/"), frame.get_attribute("src")
        browser.get(f"{api.base_url}/glacier-works/")
        row = f"#attention tr[data-work={work}]"
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, row))
        assert "does not exist" in browser.find_element(By.CSS_SELECTOR, row).text
        browser.save_screenshot(str(ARTIFACTS / "works-view-held.png"))
        browser.find_element(By.CSS_SELECTOR, f"{row} button.retry").click()
        retry_run = _run_in_message(wait, "retry recorded")
        assert api.wait_for_run("sqs_scheduled_dag", retry_run)["state"] == "success"
        row_now = rows_by_work(services)[work]
        assert row_now.state == "synced" and not row_now.needs_attention
        retried = [e for e in row_now.history if e["event"] == "retry requested by operator"]
        assert [e.get("user") for e in retried] == ["olga"]
        assert (services["archive"] / "Archive5" / "VW" / work / "images").is_dir()

        browser.find_element(By.ID, "search").send_keys("viewu")
        browser.find_element(By.CSS_SELECTOR, "#search-form button").click()
        found = wait.until(
            lambda b: b.find_elements(By.CSS_SELECTOR, f"#search-results tr[data-work={work}]")
        )
        assert "synced" in found[0].text and retry_run in found[0].text
        browser.save_screenshot(str(ARTIFACTS / "works-view-search.png"))

        # Months later the archived copy is wanted again: back to Deep Archive, then asked
        # for from the view (through restore_request_dag, which names the Op in the history).
        source = {"Bucket": world.bucket, "Key": key}
        s3.copy_object(CopySource=source, StorageClass="DEEP_ARCHIVE", **source)
        found[0].find_element(By.CSS_SELECTOR, "button.restore").click()
        ask_run = _run_in_message(wait, "restore asked")
        assert api.wait_for_run("restore_request_dag", ask_run)["state"] == "success"
        asked = [
            e for e in rows_by_work(services)[work].history if e["event"] == "restore requested"
        ]
        assert [(e["outcome"], e.get("user")) for e in asked] == [("requested", "olga")]
    refused = _status_of(lambda: viewer._call("POST", f"/glacier-works/api/works/{work}/restore"))
    assert refused == 403


def test_status_shows_each_service_with_its_live_pid(services):
    result = run(services["env"], "status")
    assert result.returncode == 0
    lines = {line.split()[0]: line.split()[1:] for line in result.stdout.splitlines() if line}
    for name in ("api-server", "scheduler", "dag-processor", "triggerer"):
        state, _, pid = lines[name]
        assert state == "running" and alive(int(pid)), (name, lines[name])
        assert int((services["home"] / "run" / f"{name}.pid").read_text()) == int(pid)
    assert lines["moto"] == ["stopped"], "the tests' own moto server is not one of its services"
    assert json.loads((services["home"] / "local-passwords.json").read_text())["tester"]
