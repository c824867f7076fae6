"""Take docs/playground.png: the playground on the demo run (after `make demo`), in headless Chromium.

    .venv/bin/python tools/playground_screenshot.py
"""

import pathlib
import socket
import sys
import threading
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    import uvicorn
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    from textgen.serve import create_app

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(ROOT / "checkpoints", "demo"), host="127.0.0.1", port=port,
                                           log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--window-size=1280,900"):
        options.add_argument(flag)
    browser = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    try:
        browser.get(f"http://127.0.0.1:{port}/")
        time.sleep(1)
        browser.find_element(By.ID, "prime").send_keys("The ")
        samples = browser.find_element(By.ID, "samples-count")
        samples.clear()
        samples.send_keys("2")
        browser.find_element(By.ID, "generate").click()
        for _ in range(300):
            if browser.find_element(By.ID, "status").text == "done":
                break
            time.sleep(0.1)
        browser.save_screenshot(str(ROOT / "docs" / "playground.png"))
    finally:
        browser.quit()
        server.should_exit = True


if __name__ == "__main__":
    main()
