"""Schemathesis hooks for scripts/schemathesis.sh.

The Safe presents an X.509-SVID: its identity is a SPIFFE ID in a URI SAN, with
no DNS or IP name, so an HTTPS client that matches the host name against the
certificate refuses it. This keeps full chain verification against the trust
bundle given with --tls-verify and skips only the host name match, as SPIFFE
clients do.
"""

import requests.adapters

_init_poolmanager = requests.adapters.HTTPAdapter.init_poolmanager


def _init_poolmanager_without_hostname(self, *args, **kwargs):
    kwargs["assert_hostname"] = False
    return _init_poolmanager(self, *args, **kwargs)


requests.adapters.HTTPAdapter.init_poolmanager = _init_poolmanager_without_hostname
