#!/usr/bin/python3
"""Verifies every DKIM-Signature of a message with dkimpy (Debian's python3-dkim), looking the
keys up in the test DNS server on loopback (never the system resolver).

Usage: dkim_verify.py MESSAGE_FILE DNS_IP DNS_PORT
       dkim_verify.py MESSAGE_FILE --record NAME TEXT   (the record given, for tests/interop)
Prints one JSON list: for each signature, top first, {"d", "s", "a", "h", "ok", "error"}.
"""
import json
import sys

import dkim
import dkim.util
import dns.message
import dns.query
import dns.rdatatype

path = sys.argv[1]
given = {sys.argv[3].rstrip(".").lower(): sys.argv[4].encode()} if sys.argv[2] == "--record" else None
if given is None:
    server, port = sys.argv[2], int(sys.argv[3])


def txt(name, timeout=5):
    if isinstance(name, bytes):
        name = name.decode()
    if given is not None:
        return given.get(name.rstrip(".").lower())
    answer = dns.query.udp(dns.message.make_query(name, dns.rdatatype.TXT), server, port=port, timeout=timeout)
    for rrset in answer.answer:
        for record in rrset:
            if record.rdtype == dns.rdatatype.TXT:
                return b"".join(record.strings)
    return None


with open(path, "rb") as f:
    message = f.read()
headers, _ = dkim.rfc822_parse(message)
signatures = [value for name, value in headers if name.lower() == b"dkim-signature"]
results = []
for i, value in enumerate(signatures):
    tags = dkim.util.parse_tag_value(b"".join(value.split()))
    verifier = dkim.DKIM(message, minkey=2048 if tags.get(b"a", b"").startswith(b"rsa") else 0)
    error = None
    try:
        ok = verifier.verify(idx=i, dnsfunc=txt)
    except Exception as e:  # dkimpy raises for bad keys and records
        ok, error = False, repr(e)
    results.append({
        "d": tags.get(b"d", b"").decode(),
        "s": tags.get(b"s", b"").decode(),
        "a": tags.get(b"a", b"").decode(),
        "h": tags.get(b"h", b"").decode(),
        "ok": bool(ok),
        "error": error,
    })
print(json.dumps(results))
