"""The playground page in a real headless Chromium (Debian's chromium + chromium-driver) against the server."""

import json
import os
import shutil
import threading
import time

import pytest

from conftest import PERIOD, free_port
from test_serve import call, server  # noqa: F401  (server: the running server fixture)

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
# CI sets TEXTGEN_REQUIRE_BROWSER=1 after installing them: there a missing browser fails instead of skipping.
pytestmark = pytest.mark.skipif(not (CHROMIUM and DRIVER) and not os.environ.get("TEXTGEN_REQUIRE_BROWSER"),
                                reason="needs Debian's chromium and chromium-driver (apt-get install chromium "
                                       "chromium-driver; .ci/run does)")


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1280,900"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # the console, where a refused script is said
    driver = webdriver.Chrome(service=Service(DRIVER, port=free_port()), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def wait_until(condition, timeout=60.0):
    """condition's value once it is true; an element not there (yet) counts as false: a page just asked for may not
    have replaced the one before it (a CI run found no #facts, once in many)."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException

    deadline = time.monotonic() + timeout
    while True:
        try:
            value = condition()
        except (NoSuchElementException, StaleElementReferenceException) as missing:
            value, last = None, missing
        else:
            last = None
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for the page{f' ({last.msg})' if last else ''}"
        time.sleep(0.1)


def test_page_shows_the_model_and_streams_side_by_side_samples(browser, server, tmp_path):  # noqa: F811
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    browser.get(server + "/")
    facts = wait_until(lambda: "LSTM(32)" in browser.find_element(By.ID, "facts").text
                       and browser.find_element(By.ID, "facts").text)
    assert facts.startswith("period: 1 × LSTM(32)") and "period.txt" in facts and "bits/char" in facts
    prime = browser.find_element(By.ID, "prime")
    prime.clear()
    prime.send_keys("abc")
    for field, value in (("length", "120"), ("samples-count", "3"), ("seed", "11")):
        element = browser.find_element(By.ID, field)
        element.clear()
        element.send_keys(value)
    slider = browser.find_element(By.ID, "temperature")
    slider.click()  # lands mid-track: 1.0
    for _ in range(4):
        slider.send_keys(Keys.ARROW_LEFT)  # the keyboard moves it by its step, 0.05
    assert browser.find_element(By.ID, "temperature-value").text == "0.8"
    browser.find_element(By.ID, "generate").click()
    wait_until(lambda: browser.find_element(By.ID, "status").text == "done")
    texts = [pre.text for pre in browser.find_elements(By.CSS_SELECTOR, "#samples pre")]
    assert len(texts) == 3 and all(len(text) == 123 and text.startswith("abc") for text in texts)
    assert all(set(text) <= set(PERIOD) for text in texts)
    assert [span.text for span in browser.find_elements(By.CSS_SELECTOR, "#samples pre span.prime")] == ["abc"] * 3
    # Each text's direction is its own: Arabic or Hebrew runs from the right (they were left-aligned, the final
    # punctuation on the wrong side), in the prime box and in the samples alike
    assert browser.execute_script(
        "const pre = document.querySelector('#samples pre'), prime = document.getElementById('prime');"
        "const before = [pre.matches(':dir(ltr)'), prime.matches(':dir(ltr)')];"
        "pre.textContent = 'مرحباً بكم!'; prime.value = 'שלום, עולם?'; prime.dispatchEvent(new Event('input'));"
        "return [...before, pre.matches(':dir(rtl)'), prime.matches(':dir(rtl)')]") == [True] * 4
    titles = [h.text for h in browser.find_elements(By.CSS_SELECTOR, "#samples h2")]
    assert titles == [f"sample {i} of seed 11 · temperature 0.8" for i in (1, 2, 3)]
    # One request for the three (a request per sample left the 7th and 8th waiting for a browser connection), so
    # sample i is the API's and the command line's sample i of seed 11.
    request = dict(prime="abc", length=120, temperature=0.8, seed=11, num_samples=3)
    assert texts == [sample["text"] for sample in json.loads(call(server, "/v1/generate", request)[1])["samples"]]
    assert browser.find_element(By.ID, "samples-count").get_attribute("max") == "4"  # the server's --max-samples
    shot = tmp_path / "playground.png"
    assert browser.save_screenshot(str(shot)) and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_stop_button_ends_a_long_stream(browser, server, monkeypatch):  # noqa: F811
    from selenium.webdriver.common.by import By
    from textgen.engine import Engine

    original = Engine.sample

    def slow(self, *args, **kwargs):
        time.sleep(0.3)  # 32 chunks of 32 characters take 10 s: time to press Stop on a busy machine (at 0.1 s the
        # stream could end first: "done", not "stopped")
        return original(self, *args, **kwargs)
    monkeypatch.setattr(Engine, "sample", slow)
    browser.get(server + "/")
    wait_until(lambda: "LSTM(32)" in browser.find_element(By.ID, "facts").text)
    for field, value in (("length", "1000"), ("samples-count", "1")):
        element = browser.find_element(By.ID, field)
        element.clear()
        element.send_keys(value)
    browser.find_element(By.ID, "generate").click()
    wait_until(lambda: len(browser.find_element(By.CSS_SELECTOR, "#samples pre").text) > 5)
    # A click is not the keyboard: the focus is not moved to the samples (a ring around them) nor is Escape named
    assert browser.switch_to.active_element.get_attribute("id") != "samples"
    assert "Escape" not in browser.find_element(By.ID, "status").text
    browser.find_element(By.ID, "stop").click()
    wait_until(lambda: browser.find_element(By.ID, "status").text == "stopped")
    assert len(browser.find_element(By.CSS_SELECTOR, "#samples pre").text) < 1000
    assert browser.find_element(By.ID, "generate").is_enabled()
    # On a phone the page scrolls down to the samples, below the form: Stop stayed up there, out of view.
    browser.set_window_size(390, 844)
    try:
        browser.find_element(By.ID, "prime").send_keys(PERIOD * 100)  # samples longer than a screen
        count = browser.find_element(By.ID, "samples-count")
        count.clear()
        count.send_keys("3")  # three cards of text, stacked: taller than the screen
        generate = browser.find_element(By.ID, "generate")
        idle_width = generate.rect["width"]
        generate.click()
        wait_until(lambda: browser.execute_script("return document.body.scrollHeight") > 2000)
        assert generate.rect["width"] == idle_width  # it grew into the place Stop left
        browser.execute_script("window.scrollTo(0, document.body.scrollHeight)")
        top, bottom = browser.execute_script("const box = document.getElementById('stop').getBoundingClientRect();"
                                             " return [box.top, box.bottom]")
        assert 0 <= top and bottom <= browser.execute_script("return window.innerHeight")
        browser.find_element(By.ID, "stop").click()
        wait_until(lambda: browser.find_element(By.ID, "status").text == "stopped")
        # At 400% zoom (WCAG's 1280 x 1024 is 320 x 256) the fixed Stop hid a quarter of the text in view: it stays
        browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                                dict(width=320, height=256, deviceScaleFactor=1, mobile=False))
        assert browser.execute_script("return [innerWidth, innerHeight]") == [320, 256]
        generate.click()
        wait_until(lambda: browser.find_element(By.ID, "stop").is_enabled())
        assert browser.execute_script("return getComputedStyle(document.getElementById('stop')).position") != "fixed"
        browser.find_element(By.ID, "stop").click()
        wait_until(lambda: browser.find_element(By.ID, "status").text == "stopped")
    finally:
        browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
        browser.set_window_size(1280, 900)


def test_bad_input_shows_the_servers_message(browser, server):  # noqa: F811
    from selenium.webdriver.common.by import By

    browser.get(server + "/")
    wait_until(lambda: "LSTM(32)" in browser.find_element(By.ID, "facts").text)
    prime = browser.find_element(By.ID, "prime")
    prime.clear()
    prime.send_keys("abxyz")
    browser.find_element(By.ID, "generate").click()
    status = wait_until(lambda: "never saw" in browser.find_element(By.ID, "status").text
                        and browser.find_element(By.ID, "status"))
    assert status.get_attribute("class") == "error"
    assert status.text.endswith("change the prime or tick “Drop characters the model never saw” to drop them")
    assert browser.find_elements(By.CSS_SELECTOR, "#samples pre") == []  # no empty cards beside the message
    # In view on a laptop's screen, at the top or scrolled down to the Generate button: it was at the foot of the
    # form, below a 1366 x 768 window's view.
    browser.set_window_size(1366, 768)
    try:
        for scroll in (0, 10000):
            browser.execute_script(f"window.scrollTo(0, {scroll})")
            top, bottom = browser.execute_script("const box = document.getElementById('status')"
                                                 ".getBoundingClientRect(); return [box.top, box.bottom]")
            assert 0 <= top and bottom < browser.execute_script("return window.innerHeight")
    finally:
        browser.set_window_size(1280, 900)
    browser.find_element(By.ID, "skip-unknown").click()  # as the message says: the prime loses x, y and z
    browser.find_element(By.ID, "generate").click()
    wait_until(lambda: browser.find_element(By.ID, "status").text == "done")
    [text] = [pre.text for pre in browser.find_elements(By.CSS_SELECTOR, "#samples pre")]
    assert len(text) == 402 and text.startswith("ab") and set(text) <= set(PERIOD)
    # The prime is styled as the model read it ("ab"), not as typed.
    assert [span.text for span in browser.find_elements(By.CSS_SELECTOR, "#samples pre span.prime")] == ["ab"]
    # A field the browser itself refuses: the page said nothing, and "done" stayed.
    length = browser.find_element(By.ID, "length")
    length.clear()
    length.send_keys("0")
    browser.find_element(By.ID, "generate").click()
    status = wait_until(lambda: browser.find_element(By.ID, "status").text.startswith("Length: ")
                        and browser.find_element(By.ID, "status"))
    assert status.get_attribute("class") == "error" and "1" in status.text, status.text
    length.clear()  # empty: the page said so but left the focus on Generate and the field unmarked
    browser.find_element(By.ID, "generate").click()
    wait_until(lambda: browser.find_element(By.ID, "status").text.startswith("Length: "))
    assert browser.switch_to.active_element.get_attribute("id") == "length"
    length.send_keys("40")
    seed = browser.find_element(By.ID, "seed")  # past 2**53 a page's number is another integer: it was sent so
    seed.send_keys("9007199254740993")
    browser.find_element(By.ID, "generate").click()
    wait_until(lambda: browser.find_element(By.ID, "status").text.startswith("Seed: "))


def streams_held_after_their_first_piece(monkeypatch) -> threading.Event:
    """After its first piece, the stream waits until the test sets the event returned."""
    from textgen.engine import Engine

    original, calls, release = Engine.sample, [], threading.Event()

    def held(self, *args, **kwargs):
        calls.append(args)
        if len(calls) > 1:
            release.wait(60)
        return original(self, *args, **kwargs)
    monkeypatch.setattr(Engine, "sample", held)
    return release


def test_the_keyboard_generates_and_stops_and_a_screen_reader_hears_the_status(browser, server,  # noqa: F811
                                                                                monkeypatch):
    """Focus fell to the page's start when Generate and then Stop were disabled, Escape did nothing, and the samples
    were a live region: a screen reader read out every piece of every sample."""
    release = streams_held_after_their_first_piece(monkeypatch)
    try:
        keyboard_and_screen_reader(browser, server, release)
    finally:
        release.set()


def keyboard_and_screen_reader(browser, server, release):  # noqa: F811
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    browser.get(server + "/")
    wait_until(lambda: "LSTM(32)" in browser.find_element(By.ID, "facts").text)
    assert browser.find_element(By.ID, "temperature").accessible_name == "Temperature"  # its value is its own
    assert browser.find_element(By.ID, "status").get_attribute("role") == "status"
    samples = browser.find_element(By.ID, "samples")
    assert samples.get_attribute("aria-live") is None
    assert (samples.aria_role, samples.accessible_name) == ("region", "Samples")  # a name a generic div cannot have
    length = browser.find_element(By.ID, "length")
    length.clear()
    length.send_keys("1000")
    focused = lambda: browser.switch_to.active_element.get_attribute("id")  # noqa: E731
    # A press on Generate let go off it (no click) does not make the next Enter on it a click
    ActionChains(browser).click_and_hold(browser.find_element(By.ID, "generate")).move_to_element(length) \
        .release().perform()
    assert browser.find_element(By.ID, "status").text == ""
    browser.find_element(By.ID, "generate").send_keys(Keys.ENTER)
    wait_until(lambda: browser.find_element(By.ID, "status").text.startswith("generating"))
    # The focus is on the samples, not on Stop, where Space (to scroll) stopped the text: Escape stops
    assert focused() == "samples" and samples.get_attribute("aria-busy") == "true"
    assert browser.find_element(By.ID, "status").text.endswith("(Escape stops)")
    assert not browser.find_element(By.ID, "run").is_enabled()  # a run chosen now would label the other's text
    wait_until(lambda: len(browser.find_element(By.CSS_SELECTOR, "#samples pre").text) > 5)
    browser.switch_to.active_element.send_keys(Keys.SPACE)
    time.sleep(0.5)
    assert browser.find_element(By.ID, "stop").is_enabled(), browser.find_element(By.ID, "status").text
    browser.switch_to.active_element.send_keys(Keys.ESCAPE)
    wait_until(lambda: browser.find_element(By.ID, "status").text == "stopped")
    assert focused() == "generate" and samples.get_attribute("aria-busy") == "false"
    release.set()
    browser.find_element(By.ID, "prime").send_keys("ab", Keys.CONTROL, Keys.ENTER)
    wait_until(lambda: browser.find_element(By.ID, "status").text == "done")
    assert browser.find_element(By.CSS_SELECTOR, "#samples pre").text.startswith("ab")
    # The prime is told from the generated text by more than its colour: italic, and a boundary a screen reader
    # says, which the sample's text (and so a copy) does not hold
    pre = browser.find_element(By.CSS_SELECTOR, "#samples pre")
    assert browser.execute_script("return getComputedStyle(document.querySelector('.prime')).fontStyle") == "italic"
    spoken = [node.get("name", {}).get("value") for node in
              browser.execute_cdp_cmd("Accessibility.getFullAXTree", {})["nodes"]]
    assert "beginning: " in spoken and " end of the beginning; generated: " in spoken, spoken
    assert "beginning" not in pre.text and "beginning" not in browser.execute_script("return arguments[0].textContent",
                                                                                        pre)


def test_min_p_and_the_repeat_guard_reach_the_server(browser, server):  # noqa: F811
    from selenium.webdriver.common.by import By

    browser.get(server + "/")
    wait_until(lambda: "LSTM(32)" in browser.find_element(By.ID, "facts").text)
    # Record what the page sends, then let it through.
    browser.execute_script("""window.sent = []; const send = window.fetch;
        window.fetch = (url, options) => { if (options && options.body) window.sent.push(JSON.parse(options.body));
                                           return send(url, options); };""")
    assert browser.find_element(By.ID, "max-repeat").get_attribute("value") == "20"  # the command line's default
    for field, value in (("min-p", "0.5"), ("max-repeat", "3")):
        element = browser.find_element(By.ID, field)
        element.clear()
        element.send_keys(value)
    browser.find_element(By.ID, "generate").click()
    wait_until(lambda: browser.find_element(By.ID, "status").text == "done")
    [body] = browser.execute_script("return window.sent")
    assert (body["min_p"], body["max_repeat"]) == (0.5, 3)
    [text] = [pre.text for pre in browser.find_elements(By.CSS_SELECTOR, "#samples pre")]
    assert len(text) == 400 and set(text) <= set(PERIOD)


def test_a_character_the_model_continues_across_the_primes_end_is_drawn_whole(browser, server):  # noqa: F811
    """A prime ending in 👩 whose sample goes on with a zero-width joiner and 💻 showed 👩 and 💻 apart (and an
    accent apart from its e): the prime's span and the generated text are drawn in two styles. The server's stream
    is played to the page as it sends one, in pieces that split the character."""
    from selenium.webdriver.common.by import By

    browser.get(server + "/")
    wait_until(lambda: "LSTM(32)" in browser.find_element(By.ID, "facts").text)
    browser.execute_script(r"""const send = window.fetch;
        window.fetch = (url, options) => {
          if (!String(url).endsWith("v1/generate")) return send(url, options);
          const pieces = [{text: "a 👩", prime: true}, {text: "\u200d", sample: 0}, {text: "💻 cafe", sample: 0},
                          {text: "\u0301", sample: 0}];
          const body = pieces.map((piece) => `data: ${JSON.stringify(piece)}\n\n`).join("")
            + 'event: done\ndata: {"warnings": []}\n\n';
          return Promise.resolve(new Response(body, {headers: {"Content-Type": "text/event-stream"}}));
        };""")
    browser.find_element(By.ID, "generate").click()
    wait_until(lambda: browser.find_element(By.ID, "status").text == "done")
    prime, texts = browser.execute_script("const pre = document.querySelector('#samples pre');"
                                          "return [pre.querySelector('.prime').textContent,"
                                          "        [...pre.childNodes].slice(1).map((node) => node.textContent)]")
    assert prime == "a 👩\u200d💻"  # the joiner and 💻 drawn in the prime's style, with its 👩
    assert texts == [" cafe", "\u0301"]  # the accent is the text's, like its e: one style


def test_the_repeat_guards_note_names_the_pages_field(browser, server, monkeypatch):  # noqa: F811
    """The page showed the server's words for it, '("max_repeat": 2)', beside a field named Max repeat."""
    import textgen.generate
    from selenium.webdriver.common.by import By

    monkeypatch.setattr(textgen.generate, "REPEATS_TOLD_FROM", 1)  # (the tiny model's runs are short)
    browser.get(server + "/")
    wait_until(lambda: "LSTM(32)" in browser.find_element(By.ID, "facts").text)
    # A temperature beyond the slider's makes the tiny model repeat itself; the rest is sent as the page sends it.
    browser.execute_script("""const send = window.fetch;
        window.fetch = (url, options) => send(url, options && options.body ?
          {...options, body: JSON.stringify({...JSON.parse(options.body), temperature: 100})} : options);""")
    for field, value in (("prime", "a"), ("length", "200"), ("seed", "3"), ("max-repeat", "2")):
        element = browser.find_element(By.ID, field)
        element.clear()
        element.send_keys(value)
    browser.find_element(By.ID, "generate").click()
    status = wait_until(lambda: browser.find_element(By.ID, "status").text.startswith("done")
                        and browser.find_element(By.ID, "status").text)
    assert status.startswith("done · the repeat guard (“Max repeat” 2) ended ") and status.endswith(
        "needs a larger “Max repeat”, or “Max repeat” 0 for no guard"), status
    assert "max_repeat" not in status


def test_a_sample_is_copied_and_a_stop_the_model_cannot_write_is_said(browser, server):  # noqa: F811
    """The done event's warnings never reached the page; a sample could only be copied by selecting it by hand."""
    from selenium.webdriver.common.by import By

    browser.get(server + "/")
    wait_until(lambda: "LSTM(32)" in browser.find_element(By.ID, "facts").text)
    prime, length = browser.find_element(By.ID, "prime"), browser.find_element(By.ID, "length")
    prime.clear()
    prime.send_keys("abc")
    length.clear()
    length.send_keys("30")
    browser.find_element(By.ID, "one-line").click()  # the period model has never seen a line break
    browser.find_element(By.ID, "generate").click()
    status = wait_until(lambda: browser.find_element(By.ID, "status").text.startswith("done")
                        and browser.find_element(By.ID, "status"))
    assert status.text == "done · the stop string '\\n' can never end a sample: the model never saw '\\n'"
    assert status.get_attribute("class") == "error"
    browser.find_element(By.ID, "one-line").click()
    prime.clear()
    prime.send_keys("ａbc")  # read as "abc", which a note says: not an error (it was shown as one)
    browser.find_element(By.ID, "generate").click()
    wait_until(lambda: "note:" in browser.find_element(By.ID, "status").text)
    assert status.text == "done · note: read the prime's 'ａ' as 'a', as the model's text writes them"
    assert status.get_attribute("class") == ""
    prime.clear()
    prime.send_keys("abc")
    browser.find_element(By.ID, "one-line").click()
    browser.find_element(By.ID, "generate").click()
    wait_until(lambda: status.text.startswith("done · the stop"))
    [text] = browser.execute_script("return [...document.querySelectorAll('#samples pre')].map(p => p.textContent)")
    assert len(text) == 33 and text.startswith("abc")  # not ended: no line break came
    browser.execute_script("window.copied = []; navigator.clipboard.writeText = async (t) => { copied.push(t); };")
    copy = browser.find_element(By.CSS_SELECTOR, "#samples button.copy")
    assert copy.accessible_name == "Copy sample 1"
    copy.click()
    wait_until(lambda: copy.text == "Copied")
    assert browser.execute_script("return window.copied") == [text]
    # said to a screen reader, which the button's own name ("Copy sample 1") did not
    spoken = browser.find_element(By.ID, "copied")
    assert spoken.get_attribute("role") == "status" and spoken.get_attribute("textContent") == "sample 1: Copied"
    wait_until(lambda: copy.text == "Copy", timeout=10)
    # Where the clipboard API is refused (a page served over http to another machine), the text is selected
    browser.execute_script("navigator.clipboard.writeText = async () => { throw new Error('not allowed'); };")
    copy.click()
    wait_until(lambda: copy.text in ("Copied", "Selected: press Ctrl-C"))
    assert browser.execute_script("return getSelection().toString()") == text


def test_the_page_runs_under_its_content_security_policy_which_refuses_an_injected_script(browser, server):  # noqa: F811
    from selenium.webdriver.common.by import By

    browser.get_log("browser")  # what earlier tests left
    browser.get(server + "/")
    wait_until(lambda: "LSTM(32)" in browser.find_element(By.ID, "facts").text)  # its script ran and called the API
    # its style applied: the header's background is the card's, not a browser default's transparent one
    assert browser.execute_script("return getComputedStyle(document.querySelector('header')).backgroundColor") \
        != "rgba(0, 0, 0, 0)"
    assert [entry["message"] for entry in browser.get_log("browser") if "Content Security Policy" in entry["message"]] \
        == []
    injected = browser.execute_script("const script = document.createElement('script');"
                                      "script.textContent = 'window.injected = 1'; document.body.append(script);"
                                      "return window.injected === undefined")
    assert injected  # refused, and said so on the console
    assert wait_until(lambda: [entry for entry in browser.get_log("browser")
                               if "Content Security Policy" in entry["message"]])


def test_the_reader_keeps_their_place_when_a_stream_ends_and_a_finger_can_hit_the_controls(
        browser, server, monkeypatch):  # noqa: F811
    """On a phone, where the samples are below the form, the end of a stream moved the focus back to Generate and
    scrolled the page up to it, away from the text being read (a screen reader's cursor too)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    release = streams_held_after_their_first_piece(monkeypatch)
    browser.set_window_size(390, 844)
    try:
        browser.get(server + "/")
        wait_until(lambda: "LSTM(32)" in browser.find_element(By.ID, "facts").text)
        sizes = browser.execute_script("return ['temperature', 'skip-unknown'].map(id => document.getElementById(id)"
                                       ".getBoundingClientRect().height)")
        assert min(sizes) >= 22, sizes  # the slider was 18 px tall, a checkbox 13
        browser.find_element(By.ID, "prime").send_keys(PERIOD * 100)  # samples longer than a screen
        count = browser.find_element(By.ID, "samples-count")
        count.clear()
        count.send_keys("2")
        browser.find_element(By.ID, "generate").send_keys(Keys.ENTER)
        wait_until(lambda: browser.find_element(By.ID, "status").text.startswith("generating"))
        wait_until(lambda: len(browser.find_element(By.CSS_SELECTOR, "#samples pre").text) > 5)
        assert browser.switch_to.active_element.get_attribute("id") == "samples"
        copy_height = browser.execute_script("return document.querySelector('button.copy')"
                                             ".getBoundingClientRect().height")
        assert copy_height >= 24, copy_height  # was 23
        bottom = browser.execute_script("document.documentElement.style.scrollBehavior = 'auto';"
                                        "window.scrollTo(0, document.documentElement.scrollHeight); return scrollY")
        assert bottom > browser.find_element(By.ID, "generate").rect["y"]  # reading below the form
        # Where the focus moved, not before: the browser keeps the text in view as the status above it wraps
        browser.execute_script("document.addEventListener('focusin', () => { window.beforeFocus = scrollY; }, true)")
        release.set()
        wait_until(lambda: browser.find_element(By.ID, "status").text == "done")
        assert browser.switch_to.active_element.get_attribute("id") == "generate"  # not lost to the page's start
        scrolled, before_focus = browser.execute_script("return [scrollY, window.beforeFocus]")
        assert scrolled == before_focus and scrolled > browser.find_element(By.ID, "generate").rect["y"]
    finally:
        release.set()
        browser.set_window_size(1280, 900)


def test_placeholders_that_say_off_or_random_are_legible_in_both_colour_schemes(browser, server):  # noqa: F811
    from selenium.webdriver.common.by import By

    def luminance(rgb: str) -> float:
        channels = [int(part) / 255 for part in rgb[rgb.index("(") + 1:rgb.index(")")].split(",")[:3]]
        linear = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
        return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]

    try:
        for scheme in ("light", "dark"):
            browser.execute_cdp_cmd("Emulation.setEmulatedMedia",
                                    {"features": [{"name": "prefers-color-scheme", "value": scheme}]})
            browser.get(server + "/")
            wait_until(lambda: "LSTM(32)" in browser.find_element(By.ID, "facts").text)
            for field in ("top-k", "seed"):
                ink, paper = browser.execute_script(
                    "const field = document.getElementById(arguments[0]);"
                    "return [getComputedStyle(field, '::placeholder').color, getComputedStyle(field).backgroundColor]",
                    field)
                lighter, darker = sorted((luminance(ink), luminance(paper)), reverse=True)
                assert (lighter + 0.05) / (darker + 0.05) >= 4.5, (scheme, field, ink, paper)  # was 3.6 when dark
    finally:
        browser.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": []})


def test_page_fits_a_phone_screen(browser, server):  # noqa: F811
    from selenium.webdriver.common.by import By

    browser.set_window_size(390, 844)
    try:
        browser.get(server + "/")
        wait_until(lambda: "LSTM(32)" in browser.find_element(By.ID, "facts").text)
        width = browser.execute_script("return document.documentElement.scrollWidth")
        viewport = browser.execute_script("return window.innerWidth")
        assert width <= viewport  # no sideways scrolling
        controls = browser.find_element(By.ID, "controls").rect
        samples = browser.find_element(By.ID, "samples").rect
        assert samples["y"] >= controls["y"] + controls["height"]  # stacked, not squeezed side by side
    finally:
        browser.set_window_size(1280, 900)


def test_the_run_picker_shows_a_damaged_runs_error_and_the_next_runs_facts(browser, trained_run, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select
    from test_serve import serving
    from textgen.serve import create_app

    for name in ("good", "broken"):
        shutil.copytree(trained_run["run_dir"], tmp_path / name)
    for kind in ("best", "last"):
        (tmp_path / "broken" / f"{kind}.json").write_text('{"model": ')
    browser.get_log("browser")  # drop what earlier tests logged
    with serving(create_app(tmp_path, "good")) as base:
        browser.get(base + "/")
        wait_until(lambda: browser.find_element(By.ID, "facts").text.startswith("good: 1 × LSTM(32)"))
        picker = Select(browser.find_element(By.ID, "run"))
        assert sorted(option.text for option in picker.options) == ["broken (damaged)", "good"]
        picker.select_by_value("broken")
        facts = wait_until(lambda: browser.find_element(By.ID, "facts").text.startswith("broken:")
                           and browser.find_element(By.ID, "facts").text)
        assert "checkpoint metadata" in facts and "is damaged" in facts
        picker.select_by_value("good")
        wait_until(lambda: browser.find_element(By.ID, "facts").text.startswith("good: 1 × LSTM(32)"))
        errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
        assert not errors, errors  # such as "Uncaught TypeError: Cannot read properties of undefined"



def test_a_server_that_lost_its_runs_or_stopped_is_said_so(browser, trained_run, tmp_path):
    """With every run deleted the facts stayed on the deleted run (the page failed on 'undefined'), and a stopped
    server was "Failed to fetch"."""
    from selenium.webdriver.common.by import By
    from test_serve import serving
    from textgen.serve import create_app

    shutil.copytree(trained_run["run_dir"], tmp_path / "good")
    with serving(create_app(tmp_path, "good")) as base:
        browser.get(base + "/")
        wait_until(lambda: browser.find_element(By.ID, "facts").text.startswith("good: 1 × LSTM(32)"))
        shutil.rmtree(tmp_path / "good")
        browser.find_element(By.ID, "generate").click()
        wait_until(lambda: browser.find_element(By.ID, "status").text.startswith("no run named 'good'"))
        wait_until(lambda: browser.find_element(By.ID, "facts").text == "no runs to serve any more: train one with "
                                                                          "textgen train, then reload")
    browser.find_element(By.ID, "generate").click()  # the server has stopped
    wait_until(lambda: browser.find_element(By.ID, "status").text == "the server cannot be reached (stopped, or the "
                                                                       "network is down); try again once it is back")


def test_a_run_gone_since_it_was_chosen_is_said_so_where_the_picker_changes(browser, trained_run, tmp_path):
    """The picker moved to another run without a word: the next Generate drew from a run nobody chose."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select
    from test_serve import serving
    from textgen.serve import create_app

    for name in ("good", "spare"):
        shutil.copytree(trained_run["run_dir"], tmp_path / name)
    with serving(create_app(tmp_path, "good")) as base:
        browser.get(base + "/")
        wait_until(lambda: browser.find_element(By.ID, "facts").text.startswith("good: 1 × LSTM(32)"))
        shutil.rmtree(tmp_path / "good")
        browser.find_element(By.ID, "generate").click()
        wait_until(lambda: browser.find_element(By.ID, "status").text
                   == "the run “good” is no longer served; “spare” is chosen instead")
        assert Select(browser.find_element(By.ID, "run")).first_selected_option.get_attribute("value") == "spare"
        assert browser.find_element(By.ID, "facts").text.startswith("spare: 1 × LSTM(32)")


def test_the_page_works_behind_a_proxy_that_serves_it_under_a_path(browser, server):  # noqa: F811
    """Behind `location /textgen/ { proxy_pass http://127.0.0.1:8000/; }` the page asked /v1/models and
    /v1/generate at the proxy's root, outside the prefix: 404s. It now asks them relative to its own address."""
    from selenium.webdriver.common.by import By

    from test_serve import SERVED, serving

    app = SERVED["app"]

    async def proxy(scope, receive, send):  # what such a proxy passes on: the path without its prefix, or nothing
        if scope["type"] == "http":
            if not scope["path"].startswith("/textgen/"):
                await send({"type": "http.response.start", "status": 404, "headers": [(b"content-length", b"0")]})
                await send({"type": "http.response.body", "body": b""})
                return
            path = scope["path"][len("/textgen"):]
            scope = dict(scope, path=path, raw_path=path.encode())
        await app(scope, receive, send)

    with serving(proxy, lifespan="off") as base:  # (the app's own server has started it)
        browser.get(f"{base}/textgen/")
        wait_until(lambda: "LSTM(32)" in browser.find_element(By.ID, "facts").text)
        prime = browser.find_element(By.ID, "prime")
        prime.clear()
        prime.send_keys("abc")
        length = browser.find_element(By.ID, "length")
        length.clear()
        length.send_keys("40")
        browser.find_element(By.ID, "generate").click()
        wait_until(lambda: browser.find_element(By.ID, "status").text == "done")
        texts = [pre.text for pre in browser.find_elements(By.CSS_SELECTOR, "#samples pre")]
        assert texts and all(len(text) == 43 and text.startswith("abc") for text in texts)
