"""The agent running a real 3-node CTDB cluster: three Debian systemd containers on one
switch, the project's .deb installed in each, nothing configured by hand but agent.toml
and one share file in a directory all three share (standing in for /etc/pve). Once on
Debian 12 (Proxmox VE 8, CTDB 4.17) and once on Debian 13 (Proxmox VE 9, CTDB 4.22).

The agent renders CTDB's files and starts it; a client in its own namespace copies a file
through the share's public address; the holding node's cable is pulled and the client's
next operation succeeds on another node (the failover time is printed); `smbgwctl drain`
on the holder moves the address away while a client keeps working (its operations, the
reconnects and any that failed are printed). A node powered off hard fails over too, and
rejoins by itself when it boots. A node whose smbd stops answering is made UNHEALTHY by
CTDB (through the agent's event script), gives up its address, and is OK again once smbd
answers.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator

import pytest

from tests.support.cluster import CLUSTER_DIR, Cluster, ClusterNode, three_nodes, wait_for
from tests.support.cluster_share import (
    PASSWORD,
    USER,
    VIP,
    agent_toml,
    client_ls,
    client_try,
    holder,
    journal,
    metrics,
    move_off_the_leader,
    serve_share,
    settle,
    status,
    wait_next_operation,
)
from tests.support.releases import RELEASES

pytestmark = pytest.mark.integration

RECONNECT_WINDOW = 20.0  # seconds a client keeps reconnecting before an operation counts as failed


def plugin_view(cluster: Cluster, node: ClusterNode, plugin: str) -> dict[str, object]:
    plugins = status(cluster, node).get("plugins")
    found = plugins.get(plugin) if isinstance(plugins, dict) else None
    return found if isinstance(found, dict) else {}


def resource_error(cluster: Cluster, node: ClusterNode, resource: str) -> str | None:
    resources = status(cluster, node).get("resources")
    found = resources.get(resource) if isinstance(resources, dict) else None
    return found.get("error") if isinstance(found, dict) else None


@pytest.fixture(scope="module", params=RELEASES)
def cluster(request: pytest.FixtureRequest) -> Iterator[Cluster]:
    """The cluster on Debian 12 (Proxmox VE 8, CTDB 4.17) and on Debian 13 (Proxmox VE 9,
    CTDB 4.22): the same .deb, each release's own Samba, CTDB and systemd."""
    with three_nodes(suite=request.param) as built:
        version = built.run(built.nodes[0], "ctdb", "version", check=False).stdout.strip()
        healthy_after = serve_share(built)
        print(f"\n[{request.param}, CTDB {version}] configured by the agent: all nodes OK {healthy_after:.1f}s "
              "after agent.toml")
        yield built


def test_the_agent_renders_ctdb_and_every_node_serves_the_share(cluster: Cluster) -> None:
    nodes_files = {cluster.run(n, "cat", "/etc/ctdb/nodes").stdout for n in cluster.nodes}
    assert nodes_files == {"".join(f"{n.address}\n" for n in cluster.nodes)}, nodes_files
    for node in cluster.nodes:
        assert f"{VIP}/24 eth0" in cluster.run(node, "cat", "/etc/ctdb/public_addresses").stdout
        assert cluster.run(node, "systemctl", "is-enabled", "ctdb", check=False).stdout.strip() == "enabled"
        assert cluster.run(node, "testparm", "-s", "--parameter-name", "clustering").stdout.strip() == "Yes"
        # status.json follows the cluster within a watch interval (5 s) and a pass
        wait_for(f"{node.name}'s agent sees three OK nodes",
                 lambda n=node: [e["state"] for e in plugin_view(cluster, n, "ctdb").get("nodes") or []]  # type: ignore[attr-defined]
                 == ["ok", "ok", "ok"] or None, timeout=30)
        view = plugin_view(cluster, node, "ctdb")
        assert view.get("leader") == cluster.ctdb_leader(node), view
        assert view.get("capabilities") == {"leader": True, "lmaster": True}, view
        scraped = metrics(cluster, node)
        for pnn in range(3):
            assert f'smbgw_ctdb_node_healthy{{pnn="{pnn}"}} 1.0' in scraped
        assert "smbgw_ctdb_recovery_mode 0.0" in scraped
    assert cluster.client("smbclient", f"//{VIP}/finance", "-U", f"{USER}%{PASSWORD}", "-c",
                          "put /etc/hostname hello.txt").returncode == 0
    assert (cluster.shared / "finance/hello.txt").exists()


def test_a_node_cut_from_the_network_fails_over(cluster: Cluster) -> None:
    settle(cluster)
    victim = move_off_the_leader(cluster)
    cut_at = time.monotonic()
    cluster.cut(victim)
    try:
        failover = wait_next_operation(cluster, cut_at)
        witness = next(n for n in cluster.nodes if n is not victim)
        new = holder(cluster, witness)
        print(f"\nfailover after a cut: the client's next operation succeeded {failover:.1f}s after the cut "
              f"({victim.name} -> {new.name}; KeepaliveInterval=1, KeepaliveLimit=3)")
        assert new is not victim
    finally:
        cluster.reconnect(victim)
    wait_for("the cut node back in the cluster", lambda: cluster.ctdb_healthy(cluster.nodes[0]) or None, timeout=180)


def test_a_node_powered_off_fails_over_and_rejoins_at_boot(cluster: Cluster) -> None:
    settle(cluster)
    victim = holder(cluster)  # the leader too: its lock dies with it
    witness = next(n for n in cluster.nodes if n is not victim)
    off_at = time.monotonic()
    cluster.power_off(victim)
    try:
        failover = wait_next_operation(cluster, off_at)
        new = holder(cluster, witness)
        print(f"\nfailover after a power cut: the client's next operation succeeded {failover:.1f}s after it "
              f"({victim.name} -> {new.name})")
        assert new is not victim
    finally:
        booted = cluster.power_on(victim)
    # At boot the .deb's units start the agent, the agent starts CTDB (enabled) and smbd.
    back = time.monotonic()
    wait_for(f"{victim.name} OK again after boot", lambda: cluster.ctdb_healthy(witness) or None, timeout=240)
    print(f"{victim.name} booted in {booted:.1f}s and was OK in the cluster {time.monotonic() - back:.1f}s later")
    assert cluster.run(victim, "systemctl", "is-active", "smbgw-agent", "ctdb", "smbd").returncode == 0


def smbd_main_pid(cluster: Cluster, node: ClusterNode) -> str:
    pid = cluster.run(node, "systemctl", "show", "--property", "MainPID", "--value", "smbd").stdout.strip()
    assert pid.isdigit() and pid != "0", f"{node.name}: smbd's MainPID is {pid!r}"
    return pid


def ctdb_finding(cluster: Cluster, node: ClusterNode) -> str | None:
    """The detail of the node's failing `ctdb` health finding about itself, if any."""
    for finding in status(cluster, node).get("health") or []:  # type: ignore[attr-defined]
        if (isinstance(finding, dict) and finding.get("plugin") == "ctdb" and finding.get("check") == "ctdb"
                and not finding.get("ok") and "this node" in str(finding.get("detail"))):
            return str(finding.get("detail"))
    return None


def exported(cluster: Cluster, node: ClusterNode, *lines: str, timeout: float = 30.0) -> str:
    """The node's metrics once they contain every one of ``lines`` (the agent reads CTDB
    every 5 s: a reading may show a node's new flag before the takeover run has moved its
    addresses)."""

    def scrape() -> str | None:
        scraped = metrics(cluster, node)
        return scraped if all(line in scraped for line in lines) else None

    return wait_for(f"{node.name}'s agent exporting {' and '.join(lines)}", scrape, timeout=timeout, interval=1.0)


def test_a_node_made_unhealthy_gives_up_its_address_and_is_healthy_again(cluster: Cluster) -> None:
    """Fault: smbd on the node holding the public address stops answering -- its main
    process is frozen (SIGSTOP). systemd still reports smbd.service active, so neither
    systemd nor the agent has anything to restart; the agent's CTDB event script
    (49.smbgw.script) fails the next `monitor` event because `smbcontrol smbd ping` gets
    no answer, and CTDB makes the node UNHEALTHY.

    Expected: CTDB moves the node's public address to a healthy node (which then answers
    ARP for it); every node's agent exports the cluster's view,
    `smbgw_ctdb_node_healthy{pnn="N"} 0` and `smbgw_ctdb_node_state{pnn="N",state="unhealthy"} 1`;
    the node's own agent reports the `ctdb` health finding `this node (pnn N) is unhealthy`
    (`smbgwctl status` prints it and exits 1); a client's new connection through the
    public address is served by another node. When smbd answers again (SIGCONT), the next
    monitor event makes the node OK: `smbgw_ctdb_node_healthy{pnn="N"} 1` on every node
    and the finding is gone.
    """
    settle(cluster)
    victim = holder(cluster)
    witness = next(n for n in cluster.nodes if n is not victim)
    pid = smbd_main_pid(cluster, victim)
    unhealthy = f'smbgw_ctdb_node_healthy{{pnn="{victim.pnn}"}} 0.0'
    began_wall = time.time()
    frozen_at = time.monotonic()
    cluster.run(victim, "kill", "-STOP", pid)
    try:
        try:
            wait_for(f"{victim.name} UNHEALTHY in CTDB",
                     lambda: cluster.ctdb_status(witness)[victim.pnn].get("Unhealthy") == "1" or None,
                     timeout=90, interval=0.5)
            marked = time.monotonic() - frozen_at
            def moved_off() -> ClusterNode | None:
                now = holder(cluster, witness)
                return now if now is not victim else None

            new = wait_for("the address on a healthy node", moved_off, timeout=60, interval=0.5)
            moved = time.monotonic() - frozen_at
            wait_for(f"{new.name} alone answering ARP for {VIP}",
                     lambda: cluster.answering(VIP) == [new] or None, timeout=30, interval=0.5)
            assert cluster.run(victim, "systemctl", "is-active", "smbd").returncode == 0  # nothing to restart
            served = wait_for("a client served through the address",
                              lambda: client_ls(cluster, 10) or None, timeout=60, interval=0.5)
            assert served
            print(f"\nunhealthy: {victim.name} (pnn {victim.pnn}) UNHEALTHY {marked:.1f}s after smbd froze, "
                  f"{VIP} on {new.name} at {moved:.1f}s, a client served through it at "
                  f"{time.monotonic() - frozen_at:.1f}s")
            for node in cluster.nodes:
                exported(cluster, node, unhealthy,
                         f'smbgw_ctdb_node_state{{pnn="{victim.pnn}",state="unhealthy"}} 1.0',
                         f'smbgw_vip_holder{{pnn="{new.pnn}",vip="{VIP}"}} 1.0')
            detail = wait_for(f"{victim.name}'s ctdb health finding", lambda: ctdb_finding(cluster, victim),
                              timeout=30, interval=1.0)
            assert detail == f"this node (pnn {victim.pnn}) is unhealthy", detail
            shown = cluster.run(victim, "smbgwctl", "status", check=False)
            assert shown.returncode == 1, shown.stdout + shown.stderr
            assert f"UNHEALTHY ctdb: ctdb (ctdb): this node (pnn {victim.pnn}) is unhealthy" in shown.stdout, \
                shown.stdout
            assert ctdb_finding(cluster, witness) is None  # the others are fine themselves
        except BaseException:
            print(journal(cluster, began_wall - 1, time.time()))
            raise
    finally:
        cluster.run(victim, "kill", "-CONT", pid, check=False)
    thawed_at = time.monotonic()
    wait_for(f"{victim.name} OK again", lambda: cluster.ctdb_healthy(witness) or None, timeout=90, interval=0.5)
    # A monitor event whose ping is in flight gets its answer as soon as smbd runs again.
    print(f"{victim.name} OK again {time.monotonic() - thawed_at:.1f}s after smbd was let run again")
    healthy = f'smbgw_ctdb_node_healthy{{pnn="{victim.pnn}"}} 1.0'
    for node in cluster.nodes:
        exported(cluster, node, healthy)
    wait_for(f"{victim.name}'s ctdb finding gone", lambda: ctdb_finding(cluster, victim) is None or None,
             timeout=30, interval=1.0)
    assert smbd_main_pid(cluster, victim) == pid  # the same smbd, never restarted
    assert client_ls(cluster)


def test_drain_moves_the_address_to_another_node(cluster: Cluster) -> None:
    settle(cluster)
    victim = holder(cluster)
    failures: list[str] = []
    attempts: list[tuple[float, float, bool, str]] = []  # wall-clock start, seconds, worked, what failed
    outages: list[float] = []
    done = threading.Event()
    operations = [0]

    def keep_working() -> None:
        # Like an SMB client: Windows reconnects a session whose TCP connection was reset
        # and reissues the request, retrying for a while (durable handles wait 60 s). An
        # operation fails here only if it cannot complete within RECONNECT_WINDOW. CTDB
        # resets the connections of an address it moves (tickle ACKs), so that clients
        # reconnect at once instead of waiting out TCP.
        while not done.is_set():
            began = time.monotonic()
            while True:
                started, tried = time.time(), time.monotonic()
                worked, said = client_try(cluster, 20)
                attempts.append((started, time.monotonic() - tried, worked, said))
                if worked:
                    if time.monotonic() - began > 1.0:
                        outages.append(time.monotonic() - began)
                    break
                if time.monotonic() - began > RECONNECT_WINDOW:
                    failures.append(time.strftime("%H:%M:%S"))
                    break
                time.sleep(0.5)
            operations[0] += 1
            time.sleep(0.2)

    worker = threading.Thread(target=keep_working, daemon=True)
    worker.start()
    began = time.time()
    try:
        time.sleep(1)
        drained = cluster.run(victim, "smbgwctl", "drain", "--timeout", "60s", check=False, timeout=300)
        assert drained.returncode == 0, drained.stdout + drained.stderr
        assert "waiting" in drained.stdout or "drained after" in drained.stdout
        assert holder(cluster) is not victim
        time.sleep(2)
    finally:
        done.set()
        worker.join(60)
    print(f"\ndrain: {operations[0]} client operations, {len(outages)} had to reconnect "
          f"(waited {', '.join(f'{o:.1f}s' for o in outages) or 'never'}), {len(failures)} failed")
    slow = [a for a in attempts if not a[2] or a[1] > 3.0]
    if slow:
        print("slow or failed attempts (start, seconds, worked, what the client said):")
        for started, seconds, worked, said in slow:
            print(f"  {time.strftime('%H:%M:%S', time.localtime(started))}.{int(started % 1 * 1000):03d} "
                  f"{seconds:5.1f}s {'ok' if worked else 'FAILED'} {said}")
        print(f"drain output:\n{drained.stdout}")
        print(journal(cluster, began - 1, time.time()))
    assert operations[0] >= 3
    assert not failures, f"client operations that could not complete within {RECONNECT_WINDOW:g}s: {failures}"
    wait_for("the drained metric", lambda: "smbgw_node_drained 1.0" in metrics(cluster, victim) or None, timeout=20)
    undrained = cluster.run(victim, "smbgwctl", "undrain", check=False)
    assert undrained.returncode == 0, undrained.stdout + undrained.stderr
    wait_for("the node enabled again", lambda: cluster.ctdb_healthy(cluster.nodes[0]) or None, timeout=60)


def test_a_placement_or_a_reordered_nodes_list_is_refused(cluster: Cluster) -> None:
    (cluster.shares_d / "placed.toml").write_text(f'path = "{CLUSTER_DIR}/finance"\nnode = "node2"\n')
    try:
        for node in cluster.nodes:
            error = wait_for(f"{node.name} refuses the placement",
                             lambda n=node: json.dumps(status(cluster, n).get("files", {}).get("placed.toml", {}))
                             if "every node serves every share" in json.dumps(status(cluster, n)) else None,
                             timeout=30)
            assert "placed.toml" in error
    finally:
        (cluster.shares_d / "placed.toml").unlink()
    first = cluster.nodes[0]
    reordered = [cluster.nodes[1].address, cluster.nodes[0].address, cluster.nodes[2].address]
    cluster.write_file(first, "/etc/smbgw/agent.toml", agent_toml(cluster, reordered))
    try:
        cluster.run(first, "systemctl", "reload", "smbgw-agent")
        error = wait_for("the reordered nodes list refused", lambda: resource_error(cluster, first, "ctdb"),
                         timeout=30)
        assert "/etc/ctdb/nodes" in error and "another order" in error, error
        assert cluster.run(first, "cat", "/etc/ctdb/nodes").stdout.splitlines()[0] == first.address
    finally:
        cluster.write_file(first, "/etc/smbgw/agent.toml", agent_toml(cluster))
        cluster.run(first, "systemctl", "reload", "smbgw-agent")
