"""The live dashboard in headless Chromium (the system's, driven by Playwright): rows appear and
change without a reload, and with 10,000 agents the page holds one page of them at a time,
pages by cursor, filters by status and finds agents through the daemon's Find. On a cluster
node the page shows the cluster (leader, term, members) and follows a failover live.

Screenshots go to target/dashboard/ (printed at the end of each test).
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from agentkeeper import AgentKeeperClient, find_binary

ROOT = pathlib.Path(__file__).resolve().parents[2]
# The SDK tests' cluster of real daemons (and the wait it uses), rather than a second copy.
sys.path.insert(0, str(ROOT / "sdk" / "python" / "tests"))
from local_cluster import LocalCluster  # noqa: E402
OUT = ROOT / "target" / "dashboard"
# Chromium's own network chatter is refused on these machines; these flags keep it quiet.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium_path() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    pytest.fail("no Chromium on PATH: the test command installs the chromium package")
    raise AssertionError


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium_path(), headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def manual() -> Iterator[AgentKeeperClient]:
    binary = find_binary(os.environ.get("AGENTKEEPER_BIN") or None)
    with AgentKeeperClient.embedded(binary=binary, clock="manual", seed=7, timeout=10) as c:
        yield c


def open_dashboard(browser: Browser, client: AgentKeeperClient) -> Page:
    page = browser.new_page(viewport={"width": 1400, "height": 1100})
    page.goto(client.daemon.metrics_url + "/")
    expect(page.locator("#conn")).to_have_text("live", timeout=10_000)
    # A reload would lose this mark: the test checks it is still there at the end.
    page.evaluate("window.__notReloaded = true")
    return page


def screenshot(page: Page, name: str) -> pathlib.Path:
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / name
    page.screenshot(path=str(path), full_page=True)
    print(f"screenshot: {path}")
    return path


def test_an_agent_appears_and_dies_live_with_its_lease_election_and_task_shown(
    browser: Browser, manual: AgentKeeperClient
) -> None:
    page = open_dashboard(browser, manual)
    expect(page.locator("#agents")).to_contain_text("no agents")
    with pytest.raises(urllib.error.HTTPError) as single:
        urllib.request.urlopen(manual.daemon.metrics_url + "/api/cluster")
    assert single.value.code == 404, "a single node has no cluster to show"

    agent = manual.register("invoice-parser", "Extracts totals from PDF invoices", tools=["pdf_read", "ocr"],
                            ttl=10, heartbeat=False)
    status = page.locator(f'tr[data-agent-id="{agent.agent_id}"] td.status')
    expect(status).to_have_text("ALIVE")
    expect(page.locator(f'tr[data-agent-id="{agent.agent_id}"]')).to_contain_text("pdf_read, ocr")

    standby = manual.register("invoice-parser-2", tools=["pdf_read"], ttl=60, heartbeat=False)
    lease = manual.acquire_lease("invoices/2026-11", agent.agent_id, ttl=30)
    manual.campaign("parsers", agent.agent_id)
    manual.campaign("parsers", standby.agent_id)
    manual.create_task("parse", b"{}", required_tools=["pdf_read"])
    lease_row = page.locator('tr[data-lease-key="invoices/2026-11"]')
    expect(lease_row).to_contain_text(str(lease.token))
    expect(page.locator("#elections")).to_contain_text("parsers")
    expect(page.locator("#tasks")).to_contain_text("PENDING")
    expect(page.locator("#events")).to_contain_text("lease.acquired")
    expect(page.locator("#task-counts")).to_contain_text("1pending")
    screenshot(page, "alive.png")

    manual.advance(11)
    expect(status).to_have_text("UNREACHABLE")
    expect(status).to_have_class("status UNREACHABLE")
    manual.advance(10)
    expect(status).to_have_text("DEAD")
    expect(lease_row).to_have_count(0)
    expect(page.locator("#events")).to_contain_text("agent.died")
    expect(page.locator("#counts")).to_contain_text("1dead (retained)")
    expect(page.locator("#counts")).to_contain_text("0leases")
    # The election moved to the standby when the leader died.
    expect(page.locator("#elections")).to_contain_text("invoice-parser-2")
    assert page.evaluate("window.__notReloaded") is True, "the page reloaded"
    expect(page.locator("#cluster-panel")).to_be_hidden()
    screenshot(page, "dashboard.png")


def test_ten_thousand_agents_are_paged_by_cursor_filtered_and_found(browser: Browser) -> None:
    binary = find_binary(os.environ.get("AGENTKEEPER_BIN") or None)
    with AgentKeeperClient.embedded(binary=binary, clock="manual", seed=7, timeout=30) as c:
        ids = []
        for i in range(10_000):
            # Agents 0, 1000, 2000, ... have a short ttl: they go UNREACHABLE when time moves.
            ttl = 10 if i % 1000 == 0 else 600
            agent = c.register(f"worker-{i:05d}", "batch worker", tools=[f"shard_{i % 50}"], ttl=ttl,
                               heartbeat=False)
            ids.append(agent.agent_id)
        c.advance(11)
        with urllib.request.urlopen(c.daemon.metrics_url + "/api/overview") as r:
            overview = json.load(r)
        assert overview["agents_total"] == 10_000
        assert len(overview["agents"]) == 100, "one page of agents, never the fleet"
        assert overview["agents_next"] is not None

        page = open_dashboard(browser, c)
        expect(page.locator("#agents-page")).to_have_text("1–100 of 10000", timeout=15_000)
        expect(page.locator("#agents tr")).to_have_count(100)
        # The log starts with the last events before the page opened.
        expect(page.locator("#events")).to_contain_text("worker-09000")
        page.click("#agents-next")
        expect(page.locator("#agents-page")).to_have_text("101–200 of 10000")
        expect(page.locator("#agents tr").first).to_contain_text("worker-00100")
        page.click("#agents-next")
        expect(page.locator("#agents tr").first).to_contain_text("worker-00200")
        page.click("#agents-prev")
        expect(page.locator("#agents-page")).to_have_text("101–200 of 10000")
        expect(page.locator("#agents tr").first).to_contain_text("worker-00100")

        # A status filter pages through that status only.
        page.select_option("#agent-status", "UNREACHABLE")
        expect(page.locator("#agents-page")).to_have_text("1–10 of 10")
        expect(page.locator("#agents tr").first).to_contain_text("worker-00000")
        expect(page.locator("#agents td.status.ALIVE")).to_have_count(0)
        # A heartbeat brings one back: it leaves the filtered page live.
        c.heartbeat(ids[3000])
        expect(page.locator("#agents-page")).to_have_text("1–9 of 9")
        expect(page.locator(f'tr[data-agent-id="{ids[3000]}"]')).to_have_count(0)
        page.select_option("#agent-status", "")

        # The search is Find: alive agents, best match first.
        page.fill("#agent-search", "worker-09999")
        expect(page.locator("#agents tr").first).to_contain_text("worker-09999")
        expect(page.locator("#agents-page")).to_have_text("100 best matches")
        page.fill("#agent-search", "shard_7")
        expect(page.locator("#agents tr").first).to_contain_text("shard_7")
        expect(page.locator("#agents tr td:nth-child(4)").filter(has_text="shard_7")).to_have_count(100)
        late = c.register("late-arrival", tools=["shard_7"], ttl=600, heartbeat=False)
        page.fill("#agent-search", "late-arrival")
        expect(page.locator("#agents tr").first).to_contain_text("late-arrival")
        expect(page.locator(f'tr[data-agent-id="{late.agent_id}"] td.status')).to_have_text("ALIVE")
        screenshot(page, "ten-thousand.png")
        assert page.evaluate("window.__notReloaded") is True, "the page reloaded"
        page.close()


def test_a_followers_page_shows_the_cluster_and_then_the_new_leader_after_the_leader_is_killed(
    browser: Browser,
) -> None:
    cluster = LocalCluster(find_binary(os.environ.get("AGENTKEEPER_BIN") or None))
    try:
        cluster.start()
        leader = cluster.leader()
        follower = next(n for n in cluster.running if n != leader)
        url = cluster.nodes[follower].metrics_url
        with urllib.request.urlopen(url + "/api/cluster") as r:
            status = json.load(r)
        assert status["node_id"] == follower and status["leader"] == leader
        assert sorted(m["id"] for m in status["members"]) == [1, 2, 3]

        page = browser.new_page(viewport={"width": 1400, "height": 1100})
        page.goto(url + "/")
        expect(page.locator("#conn")).to_have_text("live", timeout=10_000)
        page.evaluate("window.__notReloaded = true")
        panel = page.locator("#cluster-panel")
        expect(panel).to_be_visible()
        expect(page.locator("#cluster-summary")).to_contain_text(f"node {follower} · leader {leader} ·")
        expect(page.locator("#cluster tr")).to_have_count(3)
        for n, peer in cluster.peers.items():
            row = page.locator(f'#cluster tr[data-member-id="{n}"]')
            expect(row).to_contain_text(peer)
            expect(row.locator("td.role")).to_have_text("leader" if n == leader else "follower")
            expect(row).to_contain_text("voter")
        expect(page.locator(f'#cluster tr[data-member-id="{follower}"]')).to_contain_text("this node")
        screenshot(page, "cluster.png")

        cluster.kill(leader)
        new_leader = cluster.leader()
        # The page follows by itself: the stream of the follower it is on carries on.
        expect(page.locator("#cluster-summary")).to_contain_text(f"· leader {new_leader} ·", timeout=30_000)
        expect(page.locator(f'#cluster tr[data-member-id="{new_leader}"] td.role')).to_have_text("leader")
        killed = page.locator(f'#cluster tr[data-member-id="{leader}"]')
        expect(killed.locator("td.role")).to_have_text("follower")
        expect(killed).to_have_class("silent", timeout=30_000)
        expect(page.locator("#cluster tr")).to_have_count(3)
        assert page.evaluate("window.__notReloaded") is True, "the page reloaded"
        screenshot(page, "cluster-failover.png")
        page.close()
    finally:
        cluster.close()
