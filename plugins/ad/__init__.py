"""Active Directory membership for the node (the agent.toml `[ad]` table).

The node's Samba as a member of one AD domain, kept one: join (`net ads join` with the
account and password `[ad]` names), Kerberos (`/etc/krb5.conf` unless the administrator
keeps it), the identity mapping of domain users to uids and gids, a health check of the
membership every `health_interval`, recovery (a rejoin when the machine account is lost,
at most every `rejoin_min_interval`) and the fallback while no domain controller answers
(`fallback = "local"`: local passdb users keep working).

Layers, bottom up: `table` (what `[ad]` may say, every problem with its key), `render`
(the smb.conf globals and krb5.conf it means), `checks` (what Samba's tools print, read
strictly), `health` (a round of checks judged into typed reasons); then the effects:
`tool` (the tools run through the agent's runner) and `plugin` (the hooks).
"""
