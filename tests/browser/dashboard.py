#!/usr/bin/python3
"""The dashboard in a real headless browser (Debian's chromium through
chromedriver and Selenium): `switchyard demo` runs, the page loads with no
console error and shows iris on blue, a click on "Flip" (confirmed) makes
the page show green and the proxy serve green, the event log shows the
switch, and a screenshot is written to target/dashboard.png.

    tests/browser/dashboard.py [path/to/switchyard]   (default target/debug/switchyard)

Needs: apt-get install chromium chromium-driver python3-selenium
(.ci/run installs them). Exits non-zero, saying why, on any failure.
"""

import json
import os
import re
import subprocess
import sys
import time
import urllib.request

from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import WebDriverWait

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BINARY = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "target", "debug", "switchyard")
SCREENSHOT = os.path.join(ROOT, "target", "dashboard.png")
DEADLINE = 30


def start_demo():
    """Starts the demo and returns (process, proxy URL, admin URL, request body)."""
    demo = subprocess.Popen(
        [BINARY, "demo"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    urls, body = {}, None
    started = time.monotonic()
    for line in demo.stdout:
        m = re.match(r"\s+(proxy|admin)\s+(http://\S+)", line)
        if m:
            urls[m.group(1)] = m.group(2)
        m = re.search(r"-d '(.*)'", line)
        if m and body is None:
            body = m.group(1)
        if "Ctrl-C stops the demo" in line:
            break
        if time.monotonic() - started > DEADLINE:
            break
    if "proxy" not in urls or "admin" not in urls or body is None:
        demo.kill()
        sys.exit(f"the demo's banner did not name the proxy, the admin listener and a request: {urls}")
    return demo, urls["proxy"], urls["admin"], body


def served_by(proxy, body):
    request = urllib.request.Request(
        proxy + "/v2/models/iris/infer",
        data=body.encode(),
        headers={"content-type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.headers["x-switchyard-pool"]


def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,900"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)


def main():
    demo, proxy, admin, body = start_demo()
    driver = None
    try:
        driver = browser()
        wait = WebDriverWait(driver, DEADLINE)
        driver.get(admin + "/")
        active = (By.CSS_SELECTOR, '[data-model="iris"] [data-active]')
        wait.until(expected_conditions.text_to_be_present_in_element(active, "blue"))
        assert served_by(proxy, body) == "blue", "the proxy does not serve blue before the flip"
        # Both pools' endpoints show their probed health.
        states = [e.text for e in driver.find_elements(By.CSS_SELECTOR, '[data-model="iris"] .state')]
        assert states == ["healthy", "healthy"], f"endpoint states shown: {states}"

        driver.find_element(By.CSS_SELECTOR, '[data-model="iris"] button[data-action="flip"]').click()
        wait.until(expected_conditions.alert_is_present())
        alert = driver.switch_to.alert
        assert "from blue to green" in alert.text, alert.text
        alert.accept()

        wait.until(expected_conditions.text_to_be_present_in_element(active, "green"))
        assert served_by(proxy, body) == "green", "the proxy does not serve green after the flip"
        wait.until(
            expected_conditions.text_to_be_present_in_element(
                (By.CSS_SELECTOR, '#events li[data-type="switch"]'), "flip blue→green"
            )
        )
        # A split set through the API shows as a bar: 10% of new requests to blue.
        weight = urllib.request.Request(admin + "/models/iris/weight?blue=10", data=b"", method="POST")
        with urllib.request.urlopen(weight, timeout=10) as response:
            assert json.load(response)["split"] == {"pool": "blue", "percent": 10.0}
        wait.until(
            expected_conditions.presence_of_element_located(
                (By.CSS_SELECTOR, '[data-model="iris"] .split[data-split="10"]')
            )
        )
        wait.until(
            expected_conditions.text_to_be_present_in_element(
                (By.CSS_SELECTOR, '#events li[data-type="weight"]'), "10% to blue"
            )
        )
        # The request rate column fills in once two polls have seen traffic.
        served_by(proxy, body)
        time.sleep(2.5)
        os.makedirs(os.path.dirname(SCREENSHOT), exist_ok=True)
        driver.save_screenshot(SCREENSHOT)

        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert not errors, "console errors: " + json.dumps(errors, indent=1)
        print(f"dashboard: loaded with no console error, flip blue→green shown and served, split shown; screenshot {SCREENSHOT}")
    except TimeoutException:
        if driver is not None:
            driver.save_screenshot(SCREENSHOT)
            logs = driver.get_log("browser")
            sys.exit(f"timed out waiting on the page (screenshot {SCREENSHOT}); console: {json.dumps(logs)}")
        raise
    finally:
        if driver is not None:
            driver.quit()
        demo.terminate()
        try:
            demo.wait(timeout=10)
        except subprocess.TimeoutExpired:
            demo.kill()


if __name__ == "__main__":
    main()
