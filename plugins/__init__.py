"""Built-in plugins of smbgw-agent, registered under the ``smbgw`` entry-point group."""
