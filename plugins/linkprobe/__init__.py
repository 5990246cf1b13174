"""Is an address already in use on a link? ARP probes (RFC 5227) and IPv6 duplicate
address detection (RFC 4862) on raw packet sockets, and the announcements that follow a
claim. A library, not a plugin: the virtual-IP manager probes before it claims an
address, and the guest modes probe a container's or VM's static address before they
create the guest on the bridge."""
