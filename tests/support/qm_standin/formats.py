"""TEST STAND-IN (never shipped): the text formats of Proxmox VE 8.4's `qm` and `pvesh` that
the qm stand-in prints and writes, as pure functions (unit-tested in
tests/unit/test_qm_standin_format.py). Sources and commits: see qm.py's docstring.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from ..pct_standin.pct import MAC_PREFIX, PctError, parse_property_string

NIC_MODELS = ("e1000", "e1000-82540em", "e1000-82544gc", "e1000-82545em", "e1000e", "i82551", "i82557b",
              "i82559er", "ne2k_isa", "ne2k_pci", "pcnet", "rtl8139", "virtio", "vmxnet3")
NET_KEYS = ("bridge", "firewall", "link_down", "macaddr", "model", "mtu", "queues", "rate", "tag", "trunks")
IPCONFIG_KEYS = ("ip", "gw", "ip6", "gw6")
VIRTIOFS_CACHE = ("auto", "always", "metadata", "never")
CONFIGID = re.compile(r"[a-z][a-z0-9_-]+", re.IGNORECASE)  # PVE::JSONSchema pve_verify_configid
VOLUME_ID = re.compile(r"(?i:[a-z][a-z0-9\-_.]*[a-z0-9]):(.+)")  # PVE::Storage::Plugin parse_volume_id


def generated_macaddr(vmid: int, index: int) -> str:
    """Deterministic per VMID and interface (pct.py's rule), under Proxmox's MAC prefix."""
    digest = hashlib.sha256(f"smbgw-qm-standin/{vmid}/net{index}".encode()).digest()
    return MAC_PREFIX + "".join(f":{b:02X}" for b in digest[:3])


def parse_net(value: str) -> dict[str, str]:
    """qemu-server's $net_fmt: `MODEL[=MAC]` (the model names are key aliases of macaddr)
    or `model=MODEL,macaddr=MAC`, then bridge, firewall, ... ."""
    net: dict[str, str] = {}
    for part in value.split(","):
        if not part:
            continue
        key, sep, item = part.partition("=")
        if key in NIC_MODELS:
            net["model"] = key
            if sep:
                net["macaddr"] = item
            continue
        if not sep:
            raise PctError("value without key, but schema does not define a default key")
        if key not in NET_KEYS:
            raise PctError(f"invalid format - property '{key}' not allowed")
        net[key] = item
    if "model" not in net:
        raise PctError("invalid format - model: property is missing")
    if net["model"] not in NIC_MODELS:
        raise PctError(f"invalid format - model: value '{net['model']}' does not have a value in the enumeration "
                       f"'{', '.join(NIC_MODELS)}'")
    if "macaddr" in net and not re.fullmatch(r"(?:[0-9a-fA-F]{2}:){5}[0-9a-fA-F]{2}", net["macaddr"]):
        raise PctError(f"invalid format - macaddr: value does not look like a valid MAC address: {net['macaddr']}")
    return net


def print_net(net: Mapping[str, str]) -> str:
    """print_property_string with $net_fmt: `MODEL=MAC` first, the rest sorted."""
    head = net["model"] + (f"={net['macaddr']}" if "macaddr" in net else "")
    return ",".join([head, *(f"{k}={net[k]}" for k in sorted(net) if k not in ("model", "macaddr"))])


def canonical_net(vmid: int, key: str, value: str) -> str:
    """`qm set --netN`: parse_net adds a MAC when none is given (update_vm), print_net."""
    net = parse_net(value)
    net.setdefault("macaddr", generated_macaddr(vmid, int(key[3:])))
    net["macaddr"] = net["macaddr"].upper()
    return print_net(net)


def parse_ipconfig(value: str) -> dict[str, str]:
    """$ipconfig_fmt: ip=CIDR|dhcp, gw=IP, ip6=CIDR|dhcp|auto, gw6=IP."""
    data = parse_property_string(value, None, set(IPCONFIG_KEYS))
    if "ip" in data and data["ip"] != "dhcp":
        try:
            ipaddress.IPv4Interface(data["ip"])
        except ValueError:
            raise PctError(f"invalid format - ip: value does not look like a valid IPv4 network configuration: "
                           f"{data['ip']}") from None
        if "/" not in data["ip"]:
            raise PctError(f"invalid format - ip: value does not look like a valid IPv4 network configuration: "
                           f"{data['ip']}")
    if "gw" in data:
        try:
            ipaddress.IPv4Address(data["gw"])
        except ValueError:
            raise PctError(f"invalid format - gw: value does not look like a valid IPv4 address: "
                           f"{data['gw']}") from None
        if "ip" not in data:
            raise PctError("gateway specified without specifying an IP address")
    return data


def parse_agent(value: str) -> dict[str, str]:
    """$agent_fmt: `[enabled=]1|0[,fstrim_cloned_disks=..][,freeze-fs-on-backup=..][,type=..]`."""
    data = parse_property_string(value, "enabled",
                                 {"enabled", "fstrim_cloned_disks", "freeze-fs-on-backup", "type"})
    if data.get("enabled", "0") not in ("0", "1"):
        from ..pvecli import parse_boolean
        parsed = parse_boolean(data["enabled"])
        if parsed is None:
            raise PctError(f"invalid format - enabled: type check ('boolean') failed - got '{data['enabled']}'")
        data["enabled"] = str(parsed)
    return data


def agent_enabled(value: str | None) -> bool:
    """get_qga_key($conf, 'enabled')."""
    if value is None:
        return False
    try:
        return parse_agent(value).get("enabled") == "1"
    except PctError:
        return False


def parse_virtiofs(value: str) -> dict[str, str]:
    """Virtiofs.pm $virtiofs_fmt: `[dirid=]ID[,cache=..][,direct-io=..][,expose-acl=..][,expose-xattr=..]`."""
    data = parse_property_string(value, "dirid", {"dirid", "cache", "direct-io", "expose-acl", "expose-xattr"})
    if "dirid" not in data:
        raise PctError("invalid format - dirid: property is missing")
    if not CONFIGID.fullmatch(data["dirid"]):
        raise PctError(f"invalid format - dirid: invalid configuration ID '{data['dirid']}'")
    if "cache" in data and data["cache"] not in VIRTIOFS_CACHE:
        raise PctError(f"invalid format - cache: value '{data['cache']}' does not have a value in the enumeration "
                       f"'{', '.join(VIRTIOFS_CACHE)}'")
    return data


def parse_cicustom(value: str) -> dict[str, str]:
    """$cicustom_fmt: user=, meta=, network=, vendor=, each a volume id."""
    data = parse_property_string(value, None, {"user", "meta", "network", "vendor"})
    for key, volid in data.items():
        if not VOLUME_ID.fullmatch(volid):
            raise PctError(f"invalid format - {key}: unable to parse volume ID '{volid}'")
    return data


def parse_drive(value: str) -> dict[str, str]:
    """A drive string: the volume (default key `file`), then `media=`, `size=`, ... as given."""
    data: dict[str, str] = {}
    for index, part in enumerate(value.split(",")):
        key, sep, item = part.partition("=")
        if index == 0 and not sep:
            data["file"] = part
        elif sep:
            data[key] = item
    return data


def print_property_string_drive(drive: Mapping[str, str]) -> str:
    """print_drive: the volume (default key) bare, then the other keys sorted."""
    return ",".join([drive["file"], *(f"{k}={drive[k]}" for k in sorted(drive) if k != "file")])


def split_ip4(cidr: str) -> tuple[str, str]:
    """Cloudinit.pm split_ip4: address and dotted netmask."""
    interface = ipaddress.IPv4Interface(cidr)
    return str(interface.ip), str(interface.netmask)


def nocloud_network(config: Mapping[str, str], host_search: str, host_servers: Sequence[str]) -> str:
    """Cloudinit.pm nocloud_network (qemu-server 8.4.10): network-config version 1, one
    physical `ethN` per netN that has an ipconfigN (matched by lower-case MAC), then the
    nameserver entry, its values from the config or else from the host's resolv.conf
    (get_dns_conf)."""
    content = "version: 1\nconfig:\n"
    for key in sorted(k for k in config if re.fullmatch(r"net\d+", k)):
        index = key[3:]
        if not config.get(f"ipconfig{index}"):
            continue
        i = "    "
        net = parse_net(config[key])
        ipconfig = parse_ipconfig(config[f"ipconfig{index}"])
        mac = net.get("macaddr", "").lower()
        if not mac:
            raise PctError(f"network interface '{key}' has no mac address\n")
        content += f"{i}- type: physical\n{i}  name: eth{index}\n{i}  mac_address: '{mac}'\n{i}  subnets:\n"
        i += "  "
        if "ip" in ipconfig:
            if ipconfig["ip"] == "dhcp":
                content += f"{i}- type: dhcp4\n"
            else:
                address, mask = split_ip4(ipconfig["ip"])
                content += f"{i}- type: static\n{i}  address: '{address}'\n{i}  netmask: '{mask}'\n"
                if "gw" in ipconfig:
                    content += f"{i}  gateway: '{ipconfig['gw']}'\n"
        if "ip6" in ipconfig:
            if ipconfig["ip6"] == "dhcp":
                content += f"{i}- type: dhcp6\n"
            elif ipconfig["ip6"] == "auto":
                content += f"{i}- type: ipv6_slaac\n"
            else:
                content += f"{i}- type: static6\n{i}  address: '{ipconfig['ip6']}'\n"
                if "gw6" in ipconfig:
                    content += f"{i}  gateway: '{ipconfig['gw6']}'\n"
    searchdomains = config.get("searchdomain", host_search).split()
    nameservers = config["nameserver"].split() if "nameserver" in config else list(host_servers)
    # Perl: `if ($searchdomains || $nameservers)` tests two array references: always true.
    i = "    "
    content += f"{i}- type: nameserver\n"
    if nameservers:
        content += f"{i}  address:\n" + "".join(f"{i}  - '{ns}'\n" for ns in nameservers)
    if searchdomains:
        content += f"{i}  search:\n" + "".join(f"{i}  - '{sd}'\n" for sd in searchdomains)
    return content


def nocloud_metadata(user_data: str, network_data: str) -> str:
    """Cloudinit.pm nocloud_gen_metadata: only `instance-id`, the SHA-1 of user-data and
    network-config (no local-hostname: the generated user-data carries the hostname, a
    custom user-data snippet must set it itself)."""
    return f"instance-id: {hashlib.sha1((user_data + network_data).encode()).hexdigest()}\n"


def perl_pretty_json(value: Any) -> str:
    """to_json($v, {pretty => 1, canonical => 1}) of Perl's JSON (JSON::XS): three spaces
    indent, `"key" : value`, keys sorted, a trailing newline."""
    return json.dumps(value, indent=3, sort_keys=True, separators=(",", " : "), ensure_ascii=False) + "\n"


def perl_json(value: Any) -> str:
    """to_json($v, {canonical => 1}): compact, keys sorted."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def bytes_as_perl_string(data: bytes) -> str:
    """A byte string decode_base64 gives back, as Perl's JSON (utf8 => 1) then encodes it:
    each byte is one character, so non-ASCII output comes out UTF-8 encoded twice, as it
    does from the real `qm guest exec`."""
    return data.decode("latin-1")


def render_qm_list(rows: Sequence[tuple[int, str, str, int, float, int]]) -> str:
    """qm.pm `list`: nothing without VMs; else the header and one row per VM by VMID."""
    if not rows:
        return ""
    text = "{:>10} {:<20} {:<10} {:<10} {:>12} {:<10}\n".format("VMID", "NAME", "STATUS", "MEM(MB)", "BOOTDISK(GB)",
                                                               "PID")
    for vmid, name, status, mem_mb, disk_gb, pid in sorted(rows):
        text += f"{vmid:>10} {name:<20} {status:<10} {mem_mb!s:<10} {disk_gb:>12.2f} {pid!s:<10}\n"
    return text


def parse_size(text: str) -> int:
    """PVE::JSONSchema::parse_size: bytes of `NUMBER[KMGT]`."""
    found = re.fullmatch(r"(\d+(?:\.\d+)?)([KMGT])?", text)
    if not found:
        return 0
    factor = {None: 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}[found.group(2)]
    return int(float(found.group(1)) * factor)


# --------------------------------------------------------------------------- directory mappings

def parse_dir_mappings(text: str) -> dict[str, dict[str, Any]]:
    """/etc/pve/mapping/directory.cfg (pve-guest-common PVE::Mapping::Dir, a SectionConfig
    whose header is the bare ID): `ID` then tab-indented `description TEXT` and one
    `map node=N,path=P` line per node, a blank line between sections."""
    found: dict[str, dict[str, Any]] = {}
    current: dict[str, Any] | None = None
    for line in text.splitlines():
        if not line.strip():
            current = None
        elif not line[0].isspace():
            current = found.setdefault(line.strip(), {})
        elif current is not None:
            key, _, value = line.strip().partition(" ")
            if key == "map":
                current.setdefault("map", []).append(value)
            else:
                current[key] = value
    return found


def render_dir_mappings(mappings: Mapping[str, Mapping[str, Any]]) -> str:
    text = ""
    for ident, entry in mappings.items():
        text += f"{ident}\n"
        if entry.get("description"):
            text += f"\tdescription {entry['description']}\n"
        text += "".join(f"\tmap {item}\n" for item in entry.get("map", []))
        text += "\n"
    return text


def node_mapping(entry: Mapping[str, Any], node: str) -> list[dict[str, str]]:
    """PVE::Mapping::Dir::get_node_mapping: the map entries of `node`."""
    result = []
    for item in entry.get("map", []):
        data = parse_property_string(str(item), None, {"node", "path"})
        if data.get("node") == node:
            result.append(data)
    return result
