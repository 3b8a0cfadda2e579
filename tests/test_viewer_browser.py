"""The viewer in a real browser (headless Chromium through Selenium and Debian's chromedriver):
``report.html`` as the client writes it, and the MCP App page inside a stand-in host that
speaks the Apps protocol (initialise, tool result, resources/read proxied to what the server
returned). Checks: the mesh is drawn, its colours follow the activation-time range, a drag
rotates it, the slider changes the frame, a click picks a node. Screenshots go to the test's
tmp folder. Skipped, with the reason, when no Chromium or chromedriver is installed (``.ci/run``
installs Debian's ``chromium chromium-driver``)."""

from __future__ import annotations

import asyncio
import io
import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("selenium", reason="selenium is not installed (pip install -e '.[test]')")
from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402

BACKGROUND = np.array([247, 248, 250])
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-dev-shm-usage",
    "--use-angle=swiftshader",
    "--enable-unsafe-swiftshader",
    "--window-size=1400,1100",
    "--force-device-scale-factor=1",
)


def _find(*names: str) -> str | None:
    for name in names:
        found = shutil.which(name) or (
            name if os.path.isabs(name) and os.path.exists(name) else None
        )
        if found:
            return found
    return None


def chromium_driver() -> webdriver.Chrome:
    """Headless Debian Chromium with its chromedriver; never downloads a browser or driver."""
    browser = _find("chromium", "chromium-browser", "/usr/bin/chromium")
    driver = _find("chromedriver", "/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver")
    if browser is None or driver is None:
        pytest.skip(
            "no Chromium/chromedriver found: install Debian's `chromium chromium-driver` "
            "(.ci/run does) to run the browser tests"
        )
    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager must not fetch anything
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=Service(executable_path=driver))


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    driver = chromium_driver()
    yield driver
    driver.quit()


# ---------------------------------------------------------------------------- server side


async def _serve(home: Path) -> dict[str, Any]:
    """Train a candidate on a small set through the MCP tools; what the pages need."""
    from leads_agent.agent import RunResult
    from leads_agent.connection import ServerConnection
    from leads_agent.report_html import write_report_html
    from leads_server.app import build_server
    from mcp import Client
    from server_calls import call, save_tiny, start, train

    save_tiny(home, nodes=300, duration_ms=90.0)
    server = build_server(home / "archive.duckdb", compile_training=False)
    try:
        async with Client(server) as client:
            session_id = await start(client, anonymise=True)
            catalogs = await call(client, "list_catalogs", session_id=session_id)
            await call(
                client,
                "select_reaction",
                session_id=session_id,
                reaction=catalogs["reactions"][0]["name"],
            )
            await call(
                client, "select_diffusion", session_id=session_id, template="laplacian_global"
            )
            trained, _ = await train(client, session_id, epochs=1)
            candidate_id = trained["candidate_id"]
            result = RunResult.__new__(RunResult)
            result.session_id, result.best, result.notes = session_id, None, []
            result.evaluation = {"candidate_id": candidate_id}
            report = await write_report_html(ServerConnection(client), result, home / "report")
            app = (await client.read_resource("ui://leads/viewer.html")).contents[0].text
            uri = f"viewer://candidate/{candidate_id}/payload"
            payload = (await client.read_resource(uri)).contents[0].text
    finally:
        server.close()
    return {"report": report, "app": app, "tool_result": trained, "resources": {uri: payload}}


@pytest.fixture(scope="module")
def pages(browser: webdriver.Chrome, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    home = tmp_path_factory.mktemp("leads_home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LEADS_HOME", str(home))
        return asyncio.run(_serve(home))


# ---------------------------------------------------------------------------- page helpers


def _wait_ready(driver: webdriver.Chrome, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    state = None
    while time.monotonic() < deadline:
        state = driver.execute_script("return document.body.dataset.state")
        if state in ("ready", "error"):
            break
        time.sleep(0.1)
    error = driver.execute_script("return window.leadsViewer && window.leadsViewer.error")
    assert state == "ready", f"viewer state {state!r}: {error}"
    assert driver.execute_script("return window.leadsViewer.webgl"), "no WebGL context"


def _canvas(driver: webdriver.Chrome) -> np.ndarray:
    from PIL import Image

    driver.execute_script("window.leadsViewer.draw()")
    png = driver.find_element(By.ID, "gl").screenshot_as_png
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)


def _changed(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(np.abs(a - b).sum(axis=2) > 30))


def _drawn_fraction(image: np.ndarray) -> float:
    return float(np.mean(np.abs(image - BACKGROUND).sum(axis=2) > 30))


def _colours_follow_the_map(driver: webdriver.Chrome, image: np.ndarray, panel: int) -> float:
    """Fraction of visible nodes whose pixel, read back through the panel's colour map, is
    within 10% of the colour range of the node's value (shading off)."""
    lut = np.array(driver.execute_script(f"return window.leadsViewer.lut({panel})")).reshape(-1, 4)
    lut = lut[:, :3].astype(int)
    rect = driver.execute_script(f"return window.leadsViewer.panelRect({panel})")
    low, high = driver.execute_script(f"return window.leadsViewer.panelRange({panel})")
    nodes = driver.execute_script(
        f"""const v = window.leadsViewer, out = [];
        for (let n = 0; n < v.nodeCount(); n++)
          out.push([v.project({panel}, n), v.facing(n), v.panelValue({panel}, n)]);
        return out;"""
    )
    site = driver.execute_script("return window.leadsViewer.site")
    site_xy = nodes[site][0] if site is not None else None
    good = checked = 0
    for point, facing, value in nodes:
        x, y = point["x"], point["y"]
        inside = (
            rect["x"] + 5 < x < rect["x"] + rect["w"] - 5
            and rect["y"] + 28 < y < rect["y"] + rect["h"] - 34
        )
        if value is None or not np.isfinite(value) or facing < 0.4 or not inside:
            continue
        if site_xy and abs(x - site_xy["x"]) < 10 and abs(y - site_xy["y"]) < 10:
            continue
        pixel = image[int(round(y)), int(round(x))]
        index = int(np.argmin(np.abs(lut - pixel).sum(axis=1)))
        checked += 1
        good += abs(index / 255 - (value - low) / (high - low)) < 0.1
    assert checked >= 30, f"only {checked} visible nodes to check"
    return good / checked


def _interact_and_check(driver: webdriver.Chrome, shots: Path, name: str) -> None:
    """The checks both pages share; screenshots ``<name>-*.png`` under ``shots``."""
    _wait_ready(driver)
    viewer = "window.leadsViewer"
    assert driver.execute_script(f"return {viewer}.mode") == "at"
    first = _canvas(driver)
    driver.save_screenshot(str(shots / f"{name}-initial.png"))
    assert _drawn_fraction(first) > 0.08, "the canvas is (nearly) blank"

    driver.execute_script(f"{viewer}.setShading(false)")
    flat = _canvas(driver)
    # a correct map scores about 0.9, the same map read back reversed about 0.1
    assert _colours_follow_the_map(driver, flat, 0) > 0.75
    driver.execute_script(f"{viewer}.setShading(true)")

    canvas = driver.find_element(By.ID, "gl")
    rotation = driver.execute_script(f"return {viewer}.rotation()")
    before = _canvas(driver)
    ActionChains(driver).move_to_element(canvas).click_and_hold().move_by_offset(
        140, 60
    ).release().perform()
    after = _canvas(driver)
    driver.save_screenshot(str(shots / f"{name}-rotated.png"))
    assert driver.execute_script(f"return {viewer}.rotation()") != rotation
    assert _changed(before, after) > 0.05, "dragging did not rotate the mesh"

    slider = driver.find_element(By.ID, "frame")
    frames = driver.execute_script(f"return {viewer}.nFrames")
    slider.send_keys(Keys.HOME)
    for _ in range(frames // 3):
        slider.send_keys(Keys.ARROW_RIGHT)
    early = _canvas(driver)
    early_frame = driver.execute_script(f"return {viewer}.frame")
    assert early_frame == frames // 3
    assert driver.execute_script(f"return {viewer}.mode") == "potential"
    slider.send_keys(Keys.END)
    late = _canvas(driver)
    driver.save_screenshot(str(shots / f"{name}-last-frame.png"))
    assert driver.execute_script(f"return {viewer}.frame") == frames - 1
    assert _changed(early, late) > 0.02, "the slider did not change the frame"
    assert _changed(after, early) > 0.02, "the potential frame looks like the AT map"

    rect = driver.execute_script(f"return {viewer}.panelRect(0)")
    site = driver.execute_script(f"return {viewer}.site")
    node = next(
        n
        for n in range(driver.execute_script(f"return {viewer}.nodeCount()"))
        if driver.execute_script(f"return {viewer}.facing({n})") > 0.6 and n != site
    )
    point = driver.execute_script(f"return {viewer}.project(0, {node})")
    size = canvas.size
    ActionChains(driver).move_to_element_with_offset(
        canvas, int(point["x"] - size["width"] / 2), int(point["y"] - size["height"] / 2)
    ).click().perform()
    picked = driver.execute_script(f"return {viewer}.picked")
    assert picked is not None, f"no node picked near {point} in {rect}"
    assert "node " in driver.find_element(By.ID, "pickinfo").text


def test_report_html_draws_rotates_and_plays(
    browser: webdriver.Chrome, pages: dict[str, Any], tmp_path: Path
) -> None:
    report: Path = pages["report"]
    assert report.name == "report.html"
    browser.get(report.as_uri())
    _interact_and_check(browser, tmp_path, "report")
    titles = browser.execute_script(
        "return Array.from(document.querySelectorAll('.overlay .title')).map(e => e.textContent)"
    )
    assert titles == ["true activation time", "predicted activation time", "absolute error"]
    units = browser.find_element(By.CSS_SELECTOR, ".overlay .hi").text
    assert units.endswith("ms") or units.endswith("u")
    rows = browser.find_elements(By.CSS_SELECTOR, "#leaderboard tr")
    assert len(rows) == 2  # header and the one candidate
    assert list(tmp_path.glob("report-*.png"))


HOST_PAGE = """<!DOCTYPE html><html><body style="margin:0">
<iframe id="app" style="width:1380px;height:1050px;border:0"></iframe>
<script>
const APP = __APP__, RESULT = __RESULT__, RESOURCES = __RESOURCES__;
window.hostLog = [];
const frame = document.getElementById("app");
const send = (msg) => frame.contentWindow.postMessage(msg, "*");
window.addEventListener("message", (event) => {
  const m = event.data;
  if (!m || m.jsonrpc !== "2.0" || event.source !== frame.contentWindow) return;
  window.hostLog.push(m.method || "response");
  if (m.method === "ui/initialize") {
    send({jsonrpc: "2.0", id: m.id, result: {protocolVersion: "2026-01-26",
      hostInfo: {name: "test-host", version: "1"}, hostCapabilities: {serverResources: {}},
      hostContext: {}}});
  } else if (m.method === "ui/notifications/initialized") {
    send({jsonrpc: "2.0", method: "ui/notifications/tool-result",
          params: {content: [], structuredContent: RESULT}});
  } else if (m.method === "resources/read") {
    const text = RESOURCES[m.params.uri];
    send(text === undefined
      ? {jsonrpc: "2.0", id: m.id, error: {code: -32002, message: "unknown " + m.params.uri}}
      : {jsonrpc: "2.0", id: m.id, result: {contents: [{uri: m.params.uri,
          mimeType: "application/json", text}]}});
  }
});
frame.srcdoc = APP;
</script></body></html>"""


def test_mcp_app_asks_its_host_for_the_candidate_and_draws_it(
    browser: webdriver.Chrome, pages: dict[str, Any], tmp_path: Path
) -> None:
    host = HOST_PAGE
    for key, value in (
        ("__APP__", pages["app"]),
        ("__RESULT__", pages["tool_result"]),
        ("__RESOURCES__", pages["resources"]),
    ):
        host = host.replace(key, json.dumps(value).replace("</", "<\\/"))
    path = tmp_path / "host.html"
    path.write_text(host)
    browser.get(path.as_uri())
    browser.switch_to.frame(browser.find_element(By.ID, "app"))
    try:
        _interact_and_check(browser, tmp_path, "app")
        assert "candidate_id" in pages["tool_result"]
    finally:
        browser.switch_to.default_content()
    log = browser.execute_script("return window.hostLog")
    assert log[:3] == ["ui/initialize", "ui/notifications/initialized", "resources/read"]
    assert "ui/notifications/size-changed" in log
