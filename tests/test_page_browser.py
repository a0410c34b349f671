"""The search page at `/` in a real headless browser (Debian's Chromium driven by Playwright), against the real
HTTP server; skipped where neither is installed (`.ci/run` installs both)."""

import shutil
import socket
import threading
import time

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium on this machine (apt install chromium)")


@pytest.fixture()
def server(live_cfg):
    import uvicorn

    from engine.search import SearchEngine
    from engine.service import create_app

    engine = SearchEngine.from_config(live_cfg)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = uvicorn.Server(
        uvicorn.Config(create_app(engine, watch=False), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    for _ in range(200):
        if srv.started:
            break
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", engine
    srv.should_exit = True
    thread.join(10)


def test_the_page_searches_filters_personalizes_and_explains(server, tmp_path):
    url, engine = server
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        page.goto(url + "/")
        # selector waits, not wait_for_function: the page's CSP forbids the eval a string predicate needs
        page.wait_for_selector("#user option:nth-child(2)", state="attached")
        page.fill("#q", "蓝牙耳机")
        page.fill("#k", "5")
        page.click("#go")
        page.wait_for_selector(".hit")
        shown = page.eval_on_selector_all(".hit", "hs => hs.map(h => h.dataset.productId)")
        want = engine.query("蓝牙耳机", k=5)
        assert shown == [h.product_id for h in want]
        assert "hits of" in page.inner_text("#status") and "matching" in page.inner_text("#status")
        # what a shop shows: price, brand, category; no raw scores unless explain is on
        first = want.hits[0]
        meta = page.inner_text(".hit .meta")
        assert f"¥{first.price:.2f}" in meta and first.brand in meta and first.category in meta
        assert not page.query_selector_all(".hit .score")
        # facet checkboxes with counts: ticking a category filters, the category facet keeps its other values
        page.wait_for_selector("#facets input[data-facet=category]")
        cats = page.eval_on_selector_all("#facets input[data-facet=category]", "cs => cs.map(c => c.value)")
        facets = engine.query("蓝牙耳机", k=5, facets=["category"]).facets["facets"]["category"]
        assert cats == [v["value"] for v in facets] and len(cats) >= 2
        page.check(f"#facets input[data-facet=category][value='{cats[1]}']")
        page.wait_for_selector("body[data-searches='2']")  # the search the tick ran has rendered
        ids = page.eval_on_selector_all(".hit", "hs => hs.map(h => h.dataset.productId)")
        rows = [engine.products.row_of(i) for i in ids]
        assert ids and all(engine.products.categories[int(engine.products.category_codes[r])] == cats[1] for r in rows)
        assert page.eval_on_selector_all("#facets input[data-facet=category]", "cs => cs.length") == len(cats)
        # what query understanding rewrote is shown
        page.fill("#q", "藍牙耳機")
        page.click("#go")
        page.wait_for_selector("#status:has-text('normalize')")
        assert "藍牙耳機 → 蓝牙耳机" in page.inner_text("#status")
        # a user and the explain view (scores shown there)
        page.select_option("#user", index=1)
        page.check("#explain")
        page.click("#go")
        page.wait_for_selector(".hit .explain")
        assert "cross-encoder" in page.inner_text(".hit .explain") and page.query_selector_all(".hit .score")
        page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
        assert (tmp_path / "page.png").stat().st_size > 20_000
        # a bad request shows the API's error naming the parameter
        page.fill("#q", "   ")
        page.click("#go")
        page.wait_for_selector("#status.error")
        assert "q: empty" in page.inner_text("#status")
        browser.close()


def test_the_suggestion_dropdown_types_pinyin_and_takes_a_suggestion_by_keyboard(server):
    url, engine = server
    want = [s.text for s in engine.suggest("lanya", 8)]
    assert want
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page()
        page.goto(url + "/")
        page.wait_for_selector("#user option:nth-child(2)", state="attached")
        page.click("#q")
        page.keyboard.type("lanya", delay=30)
        page.wait_for_selector(f"#suggest .sugg[data-text='{want[0]}']", state="attached")
        assert page.is_visible("#suggest .sugg")
        assert page.eval_on_selector_all("#suggest .sugg", "ss => ss.map(s => s.dataset.text)") == want
        page.keyboard.press("ArrowDown")
        page.keyboard.press("ArrowDown")
        page.keyboard.press("ArrowUp")
        page.keyboard.press("Enter")  # the first suggestion: into the box and searched
        page.wait_for_selector(".hit")
        assert page.input_value("#q") == want[0] and not page.query_selector_all("#suggest .sugg")
        shown = page.eval_on_selector_all(".hit", "hs => hs.map(h => h.dataset.productId)")
        assert shown == [h.product_id for h in engine.query(want[0], k=10)]
        page.fill("#q", "")
        page.click("#q")
        page.keyboard.type("sj", delay=30)
        page.wait_for_selector("#suggest .sugg", state="attached")
        page.keyboard.press("Escape")
        assert not page.query_selector_all("#suggest .sugg")
        browser.close()


def test_the_page_shows_trending_at_start_and_similar_in_the_product_view(server):
    url, engine = server
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page()
        page.goto(url + "/")
        page.wait_for_selector("#recs .recs .rec")  # the start view: trending (no shopper chosen)
        assert "trending" in page.inner_text("#recs h3")
        assert len(page.query_selector_all("#recs .rec")) == len(engine.recommend("trending", k=8))
        page.fill("#q", "蓝牙耳机")
        page.click("#go")
        page.wait_for_selector(".hit .title")
        first = page.eval_on_selector(".hit", "h => h.dataset.productId")
        page.click(".hit .title")
        page.wait_for_selector("#product .recs .rec")
        similar = page.eval_on_selector_all(
            "#product .recs:first-of-type .rec", "rs => rs.map(r => r.dataset.productId)"
        )
        assert similar == [h.product_id for h in engine.recommend("similar", product_id=first, k=6)]
        assert "bought together" in page.inner_text("#product")
        browser.close()
