"""The job page: signed links, server-rendered SVG charts, and a screenshot in headless Chromium
(Debian's chromium package) that must show the charts' lines."""
import shutil
import subprocess

import pytest
import requests
from PIL import Image

from jobs_client import create_model, submit, wait

BLUE = (0x1F, 0x77, 0xB4)   # SVGChart's first colour


def test_job_page_and_list_need_their_signed_link(api, server):
    m = create_model(api, "page-links")
    j = wait(api, submit(api, {"type": "sft", "model": m["id"], "task": "sort", "steps": 3, "batch_size": 4})["id"])
    page = j["links"]["page"]
    assert page.startswith(f"/jobs/{j['id']}?token=")
    r = requests.get(server.url + page)
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/html")
    assert "<svg" in r.text and "<script" not in r.text and "succeeded" in r.text
    assert "default-src 'none'" in r.headers["Content-Security-Policy"]
    for bad in [f"/jobs/{j['id']}", f"/jobs/{j['id']}?token=1.abc", page.replace(j["id"], "00000000-0000-0000-0000-000000000000"),
                f"/jobs/{j['id']}?token=1000." + page.split(".", 1)[1]]:
        assert requests.get(server.url + bad).status_code == 401, bad
    listing = api.get(api.base + "/v1/jobs").json()["page_url"]
    r = requests.get(server.url + listing)
    assert r.status_code == 200 and j["id"] in r.text
    assert requests.get(server.url + listing.replace("project=", "project=9")).status_code == 401


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium package is not installed")
def test_headless_chromium_screenshot_shows_the_metric_charts(api, server, tmp_path):
    m = create_model(api, "page-shot", router_std=0.5)
    j = wait(api, submit(api, {"type": "train", "model": m["id"], "task": "reverse", "steps": 8, "batch_size": 4, "n": 4, "replay": "R3"})["id"])
    html = requests.get(server.url + j["links"]["page"]).text
    for words in ["<th>replay</th><td>R3</td>", "<th>task</th><td>reverse</td>", "<th>learning_rate</th>", "<th>started</th>",
                  "<h3>Train–inference mismatch</h3>", ">token_ratio (log scale)<"]:
        assert words in html, words   # a job's parameters and times, and every metric charted, mismatch first
    assert html.index("<h3>Train–inference mismatch</h3>") < html.index("<h3>Optimisation</h3>") < html.index("<h3>Timing</h3>")
    shot = tmp_path / "job.png"
    p = subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1280,1600",
                        f"--screenshot={shot}", server.url + j["links"]["page"]], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and shot.exists(), p.stderr[-2000:]
    img = Image.open(shot).convert("RGB")
    assert img.size == (1280, 1600)
    px = img.load()
    blue = [(x, y) for y in range(0, img.size[1], 2) for x in range(0, img.size[0], 2)
            if all(abs(px[x, y][i] - BLUE[i]) < 40 for i in range(3))]
    assert len(blue) > 400, f"only {len(blue)} chart-line pixels"
    # lines in several charts: blue pixels spread over at least 3 separate 300-pixel bands of the page
    bands = {y // 300 for _, y in blue}
    assert len(bands) >= 3, bands
    shutil.copy(shot, server.data_dir / "job-page.png")
