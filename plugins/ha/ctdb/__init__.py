"""Clustered Samba with CTDB (the agent.toml `[ctdb]` table): the plugin is `plugin.CtdbPlugin`."""
