"""The dashboard in a real browser (Debian's Chromium, driven by Playwright)
against the real stack: a keyed server on Redis, nginx serving the built
dashboard. Screenshots of each page go to test-artifacts/dashboard/."""

from __future__ import annotations

import json

import socket
import sys
from pathlib import Path

import httpx
import pytest

from impetus.gateway.keys import KeyStore
from impetus.models.store import DEFAULT_MODEL
from impetus.stack.nginx import DASHBOARD

from conftest import Server
from processes import start_nginx, stop

pytestmark = [pytest.mark.slow, pytest.mark.own_server("restarts its server during a test, with an Ollama store to discover")]

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "dashboard"
BROWSERS = ["/usr/bin/chromium", "/usr/bin/chromium-browser",
            "/Applications/Chromium.app/Contents/MacOS/Chromium",
            "/Applications/Google Chrome.app/Contents/MacOS/Google Chrome"]
# Chromium on a machine with a closed network: no background connections.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
                 "--disable-background-networking", "--disable-component-update"]


def browser_path() -> str:
    for path in BROWSERS:
        if Path(path).exists():
            return path
    raise FileNotFoundError("no Chromium found: make test installs Debian's chromium")


OLLAMA_MODEL = "dash-tiny"


def ollama_store(work: Path) -> Path:
    """An Ollama store (its real layout) holding one small qwen2 GGUF."""
    import hashlib
    import json

    from tiny_gguf import write_tiny

    store = work / "ollama"
    gguf = write_tiny(work / "tiny.gguf", "qwen2", "Q8_0")
    digest = hashlib.sha256(gguf.read_bytes()).hexdigest()
    (store / "blobs").mkdir(parents=True)
    gguf.rename(store / "blobs" / f"sha256-{digest}")
    manifest = store / "manifests" / "registry.ollama.ai" / "library" / OLLAMA_MODEL / "latest"
    manifest.parent.mkdir(parents=True)
    manifest.write_text(json.dumps({"layers": [{"mediaType": "application/vnd.ollama.image.model",
                                                "digest": f"sha256:{digest}"}]}))
    return store


VISION_MODEL = "tiny-vl"


@pytest.fixture(scope="module")
def stack(data_dir, redis_server, tmp_path_factory):
    """A data dir of its own (the default model's folder shared, a tiny random VLM beside it):
    what it imports and lists stays out of the other tests' model lists."""
    from impetus.bench import random_vlm

    assert (DASHBOARD / "index.html").exists(), "the dashboard is not built (make dashboard)"
    work = tmp_path_factory.mktemp("dashboard")
    home = work / "home"
    (home / "models").mkdir(parents=True)
    (home / "models" / DEFAULT_MODEL).symlink_to(data_dir / "models" / DEFAULT_MODEL)
    random_vlm.gemma3(home / "models" / VISION_MODEL)
    server = Server(home, work / "server.log", require_api_keys="true", redis_url=redis_server.url,
                    extra_env={"OLLAMA_MODELS": str(ollama_store(work))})
    nginx, url = start_nginx(work / "nginx", f"127.0.0.1:{server.port}")
    yield {"server": server, "url": url, "home": home}
    stop(nginx)
    server.stop()


@pytest.fixture(scope="module")
def page(stack):
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=browser_path(), args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1280, "height": 860})
        page = context.new_page()
        page.set_default_timeout(30_000)
        errors = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        yield page
        context.close()
        browser.close()
    assert not errors, errors


def shot(page, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


@pytest.fixture(scope="module")
def admin_key(redis_server):
    return KeyStore(redis_server.client()).create("dashboard-admin", admin=True)[0]


def test_sign_in_refuses_a_bad_key_and_shows_the_loaded_model(stack, page, admin_key, redis_server):
    user_key, _ = KeyStore(redis_server.client()).create("dashboard-user")
    page.goto(f"{stack['url']}/dashboard/")
    page.fill("input[name=key]", "imp_not-a-real-key")
    page.click("button[type=submit]")
    page.get_by_text("That key is not valid.").wait_for()
    page.fill("input[name=key]", user_key)
    page.click("button[type=submit]")
    page.get_by_text("That key has no admin scope.").wait_for()
    shot(page, "1-sign-in-refused")
    page.fill("input[name=key]", admin_key)
    page.click("button[type=submit]")
    page.locator("[data-test=connection]", has_text="live").wait_for()
    card = page.locator("[data-test=models-card]")
    card.get_by_text(DEFAULT_MODEL).wait_for()
    assert "loaded" in card.inner_text()
    assert " disk · hits " in card.locator("[data-test=prefix-cache]").first.inner_text()
    # The host registry: this server heartbeats its host, with the model it has loaded.
    host = page.locator(f"[data-test=hosts-card] tr[data-host='http://{socket.gethostname()}:{stack['server'].port}']")
    host.wait_for()
    assert DEFAULT_MODEL in host.inner_text()
    assert page.locator("[data-test=thermal]").inner_text() == ("unknown" if sys.platform == "linux" else
                                                               page.locator("[data-test=thermal]").inner_text())
    # The key lives in this tab's session storage, never in the address.
    assert admin_key not in page.url
    assert page.evaluate("sessionStorage.getItem('impetus.adminKey')") == admin_key
    shot(page, "2-overview")


def test_playground_streams_an_answer(stack, page):
    page.click("nav >> text=Playground")
    page.locator("select[name=model] option", has_text=DEFAULT_MODEL).wait_for(state="attached")
    page.fill("textarea[name=prompt]", "What is the capital of France?")
    page.fill("input[name=temperature]", "0")  # greedy: the answer is known
    # Record every length the answer takes while it streams in.
    page.evaluate("""() => {
        window.__lengths = [];
        new MutationObserver(() => {
            const answer = document.querySelector('[data-test=answer]');
            if (answer) window.__lengths.push(answer.textContent.length);
        }).observe(document.querySelector('[data-test=transcript]'), {subtree: true, childList: true, characterData: true});
    }""")
    page.click("button:has-text('Send')")
    page.locator("[data-test=answer-figures]", has_text="tokens/s").wait_for()
    answer = page.locator("[data-test=answer]").inner_text()
    assert "Paris" in answer
    lengths = [n for n in page.evaluate("window.__lengths") if n]
    assert len(set(lengths)) >= 3, f"the answer arrived in one piece: {lengths}"
    shot(page, "3-playground")


def test_the_playground_sends_a_picked_image(stack, page, tmp_path):
    import numpy as np
    from PIL import Image

    picture = tmp_path / "screenshot.png"
    Image.fromarray((np.random.RandomState(3).rand(48, 64, 3) * 255).astype("uint8")).save(picture)
    page.click("nav >> text=Playground")
    page.locator("select[name=model] option", has_text=VISION_MODEL).wait_for(state="attached")
    page.select_option("select[name=model]", VISION_MODEL)
    page.set_input_files("input[name=image]", str(picture))
    page.locator("[data-test=attachment]").wait_for()
    page.fill("textarea[name=prompt]", "What is in this picture?")
    page.click("button:has-text('Send')")
    page.locator("[data-test=answer-figures]", has_text="tokens/s").last.wait_for()
    assert page.locator(".message.user img").count() >= 1  # the question shows its picture
    assert page.locator("[data-test=answer]").last.inner_text().strip()
    assert page.locator("[data-test=attachment]").count() == 0  # sent: the composer is empty again
    shot(page, "3b-playground-image")
    # A text model says so, by name, in the page.
    page.select_option("select[name=model]", DEFAULT_MODEL)
    page.set_input_files("input[name=image]", str(picture))
    page.locator("[data-test=attachment]").wait_for()
    page.fill("textarea[name=prompt]", "And this one?")
    page.click("button:has-text('Send')")
    page.get_by_text("does not take images").wait_for()


def test_keys_are_created_shown_once_and_revoked(stack, page):
    page.click("nav >> text=Keys")
    page.locator("[data-test=keys-table]").wait_for()
    page.fill("form[data-test=create-key] input[name=name]", "made-in-browser")
    page.fill("form[data-test=create-key] input[name=rpm]", "42")
    page.click("form[data-test=create-key] button[type=submit]")
    new_key = page.locator("[data-test=new-key] code").inner_text()
    assert new_key.startswith("imp_")
    row = page.locator("tr[data-key=made-in-browser]")
    assert "42 rpm" in row.inner_text()
    shot(page, "4-keys-created")
    assert httpx.get(f"{stack['url']}/v1/models", headers={"Authorization": f"Bearer {new_key}"}).status_code == 200
    page.once("dialog", lambda dialog: dialog.accept())
    row.get_by_role("button", name="Revoke").click()
    row.wait_for(state="detached")
    assert httpx.get(f"{stack['url']}/v1/models", headers={"Authorization": f"Bearer {new_key}"}).status_code == 401
    shot(page, "5-keys-revoked")


def test_budgets_models_usage_and_audit_from_the_dashboard(stack, page):
    page.click("nav >> text=Keys")
    form = page.locator("form[data-test=create-key]")
    form.locator("input[name=name]").fill("budgeted")
    form.locator("input[name=models]").fill(DEFAULT_MODEL)
    form.locator("input[name=budget_tokens]").fill("5000")
    form.locator("select[name=budget_period]").select_option("week")
    # An agent's key that runs as batch while its editor's autocomplete stays interactive.
    form.locator("select[name=priority]").select_option("batch")
    form.locator("select[name=autocomplete_priority]").select_option("interactive")
    form.locator("input[name=share]").fill("2")
    form.locator("button[type=submit]").click()
    key = page.locator("[data-test=new-key]", has_text="The key for budgeted").locator("code").inner_text()
    row = page.locator("tr[data-key=budgeted]")
    assert row.locator("[data-test=models]").inner_text() == DEFAULT_MODEL
    assert row.locator("[data-test=budget]").inner_text() == "5000 tokens / week"
    assert row.locator("[data-test=priority]").inner_text() == "batch · share 2 · autocomplete interactive"
    row.get_by_role("button", name="Change").click()
    change = page.locator("form[data-test=change-key]")
    change.locator("input[name=budget_tokens]").fill("300")
    change.locator("select[name=budget_period]").select_option("day")
    change.locator("select[name=priority]").select_option("interactive")
    change.locator("select[name=autocomplete_priority]").select_option("")  # as the key's
    change.locator("button[type=submit]").click()
    row.locator("[data-test=budget]", has_text="300 tokens / day").wait_for()
    assert row.locator("[data-test=priority]").inner_text() == "interactive · share 2"
    shot(page, "4b-keys-budget")

    headers = {"Authorization": f"Bearer {key}"}
    spent = 0
    for word in ("Hi", "Hello"):  # two questions: the model's defaults are greedy, and a repeat comes from the cache
        answer = httpx.post(f"{stack['url']}/v1/chat/completions", headers=headers, timeout=60, json={
            "model": DEFAULT_MODEL, "max_tokens": 5, "messages": [{"role": "user", "content": word}]})
        assert int(answer.headers["x-impetus-budget-remaining"]) == 300 - spent
        spent += answer.json()["usage"]["total_tokens"]
    embeddings = httpx.post(f"{stack['url']}/v1/embeddings", headers=headers, timeout=60,
                            json={"model": "all-minilm-l6-v2", "input": "x"})
    assert embeddings.status_code == 403 and embeddings.json()["error"]["code"] == "model_not_allowed"

    page.click("nav >> text=Usage")
    bars = page.locator("[data-test=usage-chart-budgeted] rect")
    bars.first.wait_for(state="attached")
    assert bars.count() == 30
    assert sum(int(b.get_attribute("data-tokens")) for b in bars.all()) == spent
    table = page.locator("[data-test=usage-table]")
    assert table.locator(f"tr[data-row='budgeted/{DEFAULT_MODEL}'] td").nth(2).inner_text() == "2"
    header = table.locator("th", has=page.locator("button[data-column=key]"))
    table.locator("button[data-column=key]").click()
    assert header.get_attribute("aria-sort") == "descending"
    first = [r.inner_text().split("\t")[0] for r in table.locator("tbody tr").all()]
    assert first == sorted(first, reverse=True)
    table.locator("button[data-column=key]").click()
    assert header.get_attribute("aria-sort") == "ascending"
    shot(page, "4c-usage")

    page.click("nav >> text=Audit")
    audit = page.locator("[data-test=audit-table]")
    audit.wait_for()
    updated = audit.locator("tr[data-action='key.updated']", has_text="budgeted").first
    assert "dashboard-admin" in updated.inner_text() and "budget_tokens=300" in updated.inner_text()
    assert audit.locator("tr[data-action='key.created']", has_text="budgeted").count() == 1
    assert key not in audit.inner_text()
    shot(page, "4d-audit")


def test_live_charts_move_with_traffic(stack, page, admin_key):
    page.click("nav >> text=Live")
    chart = page.locator("[data-test='chart-tok/s']")
    chart.locator("canvas").wait_for()
    # Nobody waits for a batch slot on an idle server; the card says so (a table by key when some do).
    assert page.locator("[data-test=waiting-by-key]").inner_text() == "Nobody is waiting."
    before = int(page.locator("[data-test=requests-total] .value").inner_text())
    for _ in range(3):
        httpx.post(f"{stack['url']}/v1/chat/completions", timeout=60, headers={"Authorization": f"Bearer {admin_key}"},
                   json={"model": DEFAULT_MODEL, "max_tokens": 8, "messages": [{"role": "user", "content": "Hi!"}]})
    page.wait_for_function(
        f"() => Number(document.querySelector('[data-test=requests-total] .value').textContent) >= {before + 3}")
    points = int(chart.get_attribute("data-points"))
    page.wait_for_function(f"() => Number(document.querySelector(\"[data-test='chart-tok/s']\").dataset.points) > {points}")
    shot(page, "6-live")


def test_the_page_survives_a_server_restart(stack, page):
    page.click("nav >> text=Overview")
    page.evaluate("window.__not_reloaded = true")
    stack["server"].stop()
    page.locator("[data-test=connection]", has_text="reconnecting").wait_for()
    page.get_by_text("The server cannot be reached. Reconnecting…").wait_for()
    shot(page, "7-server-down")
    stack["server"].start_again()
    page.locator("[data-test=connection]", has_text="live").wait_for(timeout=60_000)
    page.get_by_text("The server cannot be reached").wait_for(state="detached")
    assert page.evaluate("window.__not_reloaded") is True  # reconnected by itself, no reload
    page.locator("[data-test=models-card]").get_by_text(DEFAULT_MODEL).wait_for()
    shot(page, "8-after-restart")


def test_models_can_be_pinned_and_unpinned(stack, page):
    page.click("nav >> text=Models")
    row = page.locator(f"tr[data-model='{DEFAULT_MODEL}']")
    row.get_by_text("loaded").wait_for()
    # Its default sampling, each with its source (models.defaults), and what it does.
    assert row.locator("[data-default=temperature]").inner_text() == "temperature 0 · bundled"
    assert row.locator("[data-default=top_p]").inner_text() == "top_p 0.9 · model_card"
    assert row.locator("[data-capability]").count() == 0 and "text" in row.inner_text()
    row.get_by_role("button", name="Pin").click()
    row.locator(".tag", has_text="pinned").wait_for()
    shot(page, "9-models-pinned")
    row.get_by_role("button", name="Unpin").click()
    row.locator(".tag", has_text="pinned").wait_for(state="detached")


def test_a_model_found_in_ollama_is_imported_from_the_models_view(stack, page):
    import shutil

    data_dir = stack["home"]
    page.click("nav >> text=Models")
    row = page.locator(f"[data-test=discovered] tr[data-source='ollama:{OLLAMA_MODEL}:latest']")
    row.get_by_text("qwen2").wait_for()
    try:
        row.get_by_role("button", name="Import").click()
        page.locator(f"[data-test=import-progress][data-status=done][data-source='ollama:{OLLAMA_MODEL}:latest']"
                     ).wait_for(timeout=60_000)
        page.locator(f"[data-test=models-table] tr[data-model='{OLLAMA_MODEL}']").wait_for()
        shot(page, "9b-models-imported")
        assert (data_dir / "models" / OLLAMA_MODEL / "config.json").is_file()
    finally:  # the model list stays as the other tests of this module expect it
        shutil.rmtree(data_dir / "models" / OLLAMA_MODEL, ignore_errors=True)
        shutil.rmtree(data_dir / "models" / ".imports", ignore_errors=True)


def test_documents_are_uploaded_ingested_and_searched_from_the_dashboard(stack, page, tmp_path):
    note = tmp_path / "oncall.md"
    note.write_text("# On call\n\nWhen the database fails over, page the storage team on channel #vault-7.\n\n"
                    "Lunch is at noon. The office plants are watered on Fridays.\n")
    page.click("nav >> text=Documents")
    page.locator("form[data-test=create-store] input[name=name]").fill("handbook")
    page.locator("form[data-test=create-store] button[type=submit]").click()
    page.locator("form[data-test=upload] input[name=file]").set_input_files(str(note))
    page.locator("form[data-test=upload] button[type=submit]").click()
    # The store's row moves to completed by itself (the view polls while files are in progress).
    page.locator("[data-test=stores-table] tr[data-status=completed]", has_text="handbook").wait_for(timeout=60_000)
    page.locator("[data-test=store-files] tr[data-status=completed]", has_text="oncall.md").wait_for()
    page.locator("form[data-test=search] input[name=query]").fill("who do I page when the database fails over?")
    page.locator("form[data-test=search] button[type=submit]").click()
    first = page.locator("[data-test=search-results] li").first
    first.wait_for()
    assert "oncall.md" in first.inner_text() and "#vault-7" in first.inner_text()
    assert 0 < float(first.locator("[data-test=score]").inner_text()) <= 1
    shot(page, "9c-documents")


def test_a_batch_shows_its_progress_and_its_output_downloads(stack, page, admin_key, tmp_path):
    import openai

    client = openai.OpenAI(base_url=f"{stack['url']}/v1", api_key=admin_key, max_retries=0, timeout=60)
    lines = [{"custom_id": f"c-{n}", "method": "POST", "url": "/v1/chat/completions",
              "body": {"model": DEFAULT_MODEL, "max_tokens": 4, "messages": [{"role": "user", "content": f"Hi {n}"}]}}
             for n in range(3)]
    upload = client.files.create(file=("three.jsonl", "\n".join(json.dumps(x) for x in lines).encode()),
                                 purpose="batch")
    batch = client.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h")
    page.click("nav >> text=Batches")
    row = page.locator(f"[data-test=batches-table] tr[data-batch='{batch.id}'][data-status=completed]")
    row.wait_for(timeout=60_000)  # the view polls while it runs
    assert "3 done of 3" in row.inner_text()
    with page.expect_download() as downloading:
        row.locator("[data-test=download-output]").click()
    saved = tmp_path / "output.jsonl"
    downloading.value.save_as(saved)
    assert [json.loads(x)["custom_id"] for x in saved.read_text().splitlines()] == ["c-0", "c-1", "c-2"]
    shot(page, "9d-batches")


def test_a_phone_screen(stack, page):
    page.set_viewport_size({"width": 390, "height": 844})
    page.click("nav >> text=Overview")
    page.locator("[data-test=models-card]").wait_for()
    assert page.evaluate("document.documentElement.scrollWidth") <= 390 + 1  # nothing sideways
    shot(page, "10-phone-overview")
    page.set_viewport_size({"width": 1280, "height": 860})


def test_redis_down_is_shown_and_the_page_keeps_working(stack, page, redis_server):
    """Last in this module: the test Redis keeps nothing, so its keys are gone after."""
    page.click("nav >> text=Overview")
    redis_server.stop()
    try:
        page.get_by_text("Redis is unreachable").first.wait_for()
        assert page.locator("[data-test=connection]").inner_text() == "live"  # degraded, not down
        shot(page, "11-redis-down")
    finally:
        redis_server.start()
