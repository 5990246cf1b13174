"""smbgw-agent: serve the SMB shares declared in /etc/smbgw/shares.d on this node."""

__version__ = "0.1.0"
