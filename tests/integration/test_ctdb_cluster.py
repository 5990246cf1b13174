"""The agent running a real 3-node CTDB cluster: three Debian systemd containers on one
switch, the project's .deb installed in each, nothing configured by hand but agent.toml
and one share file in a directory all three share (standing in for /etc/pve).

The agent renders CTDB's files and starts it; a client in its own namespace copies a file
through the share's public address; the holding node's cable is pulled and the client's
next operation succeeds on another node (the failover time is printed); `smbgwctl drain`
on the holder moves the address away while a client keeps working (its operations, the
reconnects and any that failed are printed).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator

import pytest

from tests.support.cluster import CLUSTER_DIR, Cluster, ClusterNode, three_nodes, wait_for

pytestmark = pytest.mark.integration

VIP = "10.211.33.100"
USER, PASSWORD, UID = "alice", "Cluster-Passw0rd", "2000"
RECONNECT_WINDOW = 20.0  # seconds a client keeps reconnecting before an operation counts as failed
SHARE_FILE = f'path = "{CLUSTER_DIR}/finance"\n\n[ha]\nvip = "{VIP}/24"\n'
METRICS = """
import urllib.request
print(urllib.request.urlopen("http://127.0.0.1:9945/metrics", timeout=10).read().decode())
"""


def agent_toml(cluster: Cluster, nodes: list[str] | None = None) -> str:
    listed = ", ".join(f'"{address}"' for address in (nodes or [n.address for n in cluster.nodes]))
    return (f'[agent]\nallowed_roots = ["{CLUSTER_DIR}"]\n\n[ctdb]\nnodes = [{listed}]\n'
            f'public_interface = "eth0"\ncluster_lock = "{CLUSTER_DIR}/.ctdb.lock"\n'
            'keepalive_interval = "1s"\nkeepalive_limit = 3\n')


def status(cluster: Cluster, node: ClusterNode) -> dict[str, object]:
    text = cluster.run(node, "cat", "/run/smbgw/status.json", check=False).stdout
    try:
        found = json.loads(text)
    except ValueError:
        return {}
    return found if isinstance(found, dict) else {}


def metrics(cluster: Cluster, node: ClusterNode) -> str:
    return cluster.run(node, "python3", "-c", METRICS).stdout


def plugin_view(cluster: Cluster, node: ClusterNode, plugin: str) -> dict[str, object]:
    plugins = status(cluster, node).get("plugins")
    found = plugins.get(plugin) if isinstance(plugins, dict) else None
    return found if isinstance(found, dict) else {}


def resource_error(cluster: Cluster, node: ClusterNode, resource: str) -> str | None:
    resources = status(cluster, node).get("resources")
    found = resources.get(resource) if isinstance(resources, dict) else None
    return found.get("error") if isinstance(found, dict) else None


def client_ls(cluster: Cluster, timeout: float = 20.0) -> bool:
    result = cluster.client("smbclient", f"//{VIP}/finance", "-U", f"{USER}%{PASSWORD}", "-m", "SMB3",
                            "-t", str(int(timeout)), "-c", "ls", timeout=timeout + 10)
    return result.returncode == 0


def diagnostics(cluster: Cluster) -> str:
    """What each node's agent and CTDB said, for a failed bring-up."""
    out = []
    for node in cluster.nodes:
        for argv in (["journalctl", "--no-pager", "-n", "60", "-u", "smbgw-agent"],
                     ["journalctl", "--no-pager", "-n", "40", "-u", "ctdb"],
                     ["systemctl", "--no-pager", "status", "ctdb", "smbd"], ["ls", "-l", "/etc/ctdb",
                                                                           "/etc/ctdb/events/legacy"],
                     ["ctdb", "status"], ["cat", "/etc/ctdb/ctdb.conf", "/etc/ctdb/nodes",
                                          "/etc/ctdb/public_addresses"]):
            result = cluster.run(node, *argv, check=False, timeout=30)
            out.append(f"---- {node.name}: {' '.join(argv)}\n{result.stdout[-6000:]}{result.stderr[-2000:]}")
    return "\n".join(out)


def holder(cluster: Cluster) -> ClusterNode:
    return cluster.node(cluster.ctdb_ip_holders(cluster.nodes[0])[VIP])


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with three_nodes() as built:
        share_dir = built.shared / "finance"
        share_dir.mkdir()
        share_dir.chmod(0o777)
        (built.shares_d / "finance.toml").write_text(SHARE_FILE)
        for node in built.nodes:
            built.run(node, "useradd", "--uid", UID, "--no-create-home", USER)
            built.write_file(node, "/etc/smbgw/agent.toml", agent_toml(built))
            built.run(node, "systemctl", "reload", "smbgw-agent")
        began = time.monotonic()
        try:
            wait_for("all three CTDB nodes OK", lambda: built.ctdb_healthy(built.nodes[0]) or None, timeout=240)
        except TimeoutError:
            print(diagnostics(built))
            raise
        print(f"\nCTDB configured by the agent: all nodes OK {time.monotonic() - began:.1f}s after agent.toml")
        # passdb.tdb is a clustered database now: one smbpasswd serves every node
        built.run(built.nodes[0], "smbpasswd", "-s", "-a", USER, input=f"{PASSWORD}\n{PASSWORD}\n")
        wait_for("the share through its public address", lambda: client_ls(built) or None, timeout=120)
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
        scraped = metrics(cluster, node)
        for pnn in range(3):
            assert f'smbgw_ctdb_node_healthy{{pnn="{pnn}"}} 1.0' in scraped
        assert "smbgw_ctdb_recovery_mode 0.0" in scraped
    assert cluster.client("smbclient", f"//{VIP}/finance", "-U", f"{USER}%{PASSWORD}", "-c",
                          "put /etc/hostname hello.txt").returncode == 0
    assert (cluster.shared / "finance/hello.txt").exists()


def test_a_node_cut_from_the_network_fails_over(cluster: Cluster) -> None:
    leader = cluster.ctdb_leader(cluster.nodes[0])
    victim = holder(cluster)
    if victim.pnn == leader:  # the leader holds the lock on a "cluster file system" it still reaches
        other = next(n for n in cluster.nodes if n.pnn != leader)
        cluster.ctdb(cluster.nodes[0], "moveip", VIP, str(other.pnn))
        wait_for("the address on a node that does not hold the cluster lock",
                 lambda: holder(cluster).pnn == other.pnn or None, timeout=30)
        time.sleep(25)  # right after a recovery a cut takes much longer (18-21 s measured here)
        victim = other
    cut_at = time.monotonic()
    cluster.cut(victim)
    try:
        wait_for("a client operation through the address after the cut", lambda: client_ls(cluster, 5) or None,
                 timeout=90, interval=0.2)
        failover = time.monotonic() - cut_at
        witness = next(n for n in cluster.nodes if n is not victim)
        new = cluster.node(cluster.ctdb_ip_holders(witness)[VIP])
        print(f"\nfailover after a cut: the client's next operation succeeded {failover:.1f}s after the cut "
              f"({victim.name} -> {new.name}; KeepaliveInterval=1, KeepaliveLimit=3)")
        assert new is not victim
    finally:
        cluster.reconnect(victim)
    wait_for("the cut node back in the cluster", lambda: cluster.ctdb_healthy(cluster.nodes[0]) or None, timeout=180)


def test_drain_moves_the_address_to_another_node(cluster: Cluster) -> None:
    victim = holder(cluster)
    failures: list[str] = []
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
            while not client_ls(cluster, 20):
                if time.monotonic() - began > RECONNECT_WINDOW:
                    failures.append(time.strftime("%H:%M:%S"))
                    break
                time.sleep(0.5)
            else:
                if time.monotonic() - began > 1.0:
                    outages.append(time.monotonic() - began)
            operations[0] += 1
            time.sleep(0.2)

    worker = threading.Thread(target=keep_working, daemon=True)
    worker.start()
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
    # Not asserted yet: on an idle machine no operation failed (44 of 44), but on a loaded
    # one an operation could not complete within 20 s of reconnecting (issue 11, open: the
    # disable after the move seems to set off a recovery that freezes the databases).
    assert operations[0] >= 3
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
