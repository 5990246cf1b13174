"""Active Directory membership for the node (the agent.toml `[ad]` table).

The plugin will make the node's Samba a member of one AD domain and keep it one: join
(`net ads join` with the account and password `[ad]` names), Kerberos (`/etc/krb5.conf`
unless the administrator keeps it), the identity mapping of domain users to uids and
gids, a health check of the membership every `health_interval`, recovery (a rejoin when
the machine account is lost, at most every `rejoin_min_interval`) and the fallback while
no domain controller answers (`fallback = "local"`: local passdb users keep working).

So far this package holds the pure bottom layer: `table` (what `[ad]` may say, every
problem with its key) and `render` (the smb.conf globals and krb5.conf it means). The
plugin class, and every effect (files, commands, the join itself), come later on top.
"""
