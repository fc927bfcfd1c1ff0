"""Save PNG screenshots of the dashboard's overview and results plot (the README's pictures).

    python scripts/dashboard_screenshots.py URL QUEUE PASSWORD OUT_DIR [--only overview|plot]
        [--metric M --x ARG --color ARG]

Logs in to the dashboard at URL (e.g. http://127.0.0.1:9321) with headless Chromium
(Debian's ``chromium``, driven by Playwright from the dev extra) and writes
``OUT_DIR/dashboard-overview.png`` and ``OUT_DIR/dashboard-plot.png``. ``scripts/demo.sh``
runs it against the digits demo when ``LABTASKER_DEMO_SCREENSHOTS=DIR`` is set: the
overview while the grid runs, the plot after it.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from urllib.parse import urlencode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("url")
    parser.add_argument("queue")
    parser.add_argument("password")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--metric", default="")
    parser.add_argument("--x", default="")
    parser.add_argument("--color", default="")
    parser.add_argument("--only", choices=("overview", "plot"), help="Take just one of them.")
    parser.add_argument("--chromium", default=os.environ.get("CHROMIUM", "/usr/bin/chromium"))
    args = parser.parse_args()
    try:
        from playwright.sync_api import expect, sync_playwright
    except ImportError:
        print("dashboard_screenshots: Playwright is missing (pip install -e '.[dev]')",
              file=sys.stderr)
        return 2
    args.out_dir.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=args.chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 720}, device_scale_factor=1)
        page.goto(args.url.rstrip("/") + "/ui/login")
        page.get_by_label("Queue name").fill(args.queue)
        page.get_by_label("Password").fill(args.password)
        page.get_by_role("button", name="Log in").click()
        expect(page.locator("#count-total")).not_to_have_text("–")
        page.wait_for_timeout(500)
        if args.only != "plot":
            page.screenshot(path=str(args.out_dir / "dashboard-overview.png"))
            print(f"dashboard_screenshots: wrote {args.out_dir}/dashboard-overview.png")
        if args.only == "overview":
            browser.close()
            return 0
        query = {k: v for k, v in (("metric", args.metric), ("x", args.x),
                                   ("color", args.color)) if v}
        page.goto(args.url.rstrip("/") + "/ui/plot" + ("?" + urlencode(query) if query else ""))
        expect(page.locator("svg#plot circle.mark").first).to_be_visible()
        page.wait_for_timeout(500)
        page.screenshot(path=str(args.out_dir / "dashboard-plot.png"))
        print(f"dashboard_screenshots: wrote {args.out_dir}/dashboard-plot.png")
        browser.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
