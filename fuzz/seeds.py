#!/usr/bin/env python3
"""Writes the committed seed corpora (fuzz/corpus/<target>/seed-*): run from fuzz/ after
changing a target's input format. Seeds are small, valid-looking inputs that reach each
target's deeper states at once."""
import os

SEEDS = {
    "command": [
        b"EHLO client.example", b"HELO x", b"MAIL FROM:<a@b.example> SIZE=100 BODY=8BITMIME",
        b"RCPT TO:<b@c.example> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;b@c.example", b"DATA",
        b"BDAT 100 LAST", b"AUTH PLAIN AGFsaWNlAHJpZ2h0", b"AUTH LOGIN", b"STARTTLS", b"RSET",
        b"VRFY postmaster", b"NOOP x", b"QUIT", b"MAIL FROM:<> RET=HDRS ENVID=abc+2Bx",
        b"RCPT TO:<\"quoted local\"@example.org>", b"MAIL FROM:<@a.example,@b.example:u@c.example>",
        b"MAIL FROM:<j\xc3\xb6rg@example.org> SMTPUTF8", b"MAIL FROM:<a@b> MT-PRIORITY=3 REQUIRETLS",
    ],
    "address": [
        b"\x00a@b.example", b"\x80j\xc3\xb6rg@b\xc3\xa9.example", b"\x00\"q\\\"x\"@[127.0.0.1]",
        b"\x00@r1.example,@r2.example:u@d.example", b"\x00u@[IPv6:2001:db8::1]",
        b"\x01SIZE=1000 BODY=8BITMIME RET=FULL ENVID=x+2By SMTPUTF8 REQUIRETLS MT-PRIORITY=-2 AUTH=<>",
        b"\x02NOTIFY=SUCCESS,DELAY ORCPT=rfc822;a+2Bb@c.example RRVS=2014-04-03T23:01:00Z;R",
        b"\x02NOTIFY=NEVER ORCPT=utf-8;j\\x{00F6}rg@example.org",
    ],
    "data_scanner": [
        b"\x00Subject: x\r\n\r\nbody\r\n.\r\n", b"\x40..stuffed\r\n.\r\nQUIT\r\n",
        b"\x21line\nbare LF\r\n.\r\n", b"\x00\r\n\x00.\r\n.\r\n", b"\x01chunk one\r\nchunk two",
        b"\x7f" + b"x" * 300 + b"\r\n.\r\n",
    ],
    "reply_parser": [
        b"\x40220 mx.example ESMTP\r\n250-mx.example\r\n250-PIPELINING\r\n250 8BITMIME\r\n",
        b"\x10250 2.1.0 ok\r\n250 2.1.5 ok\r\n550 5.1.1 no such user\r\n354 go\r\n",
        b"\x80421-4.7.0 busy\r\n421 4.7.0 try later\r\n", b"\x01250-a\r\n251 b\r\n", b"\x05999 x\r\n",
    ],
    "client_session": [
        b"\x1b220 mx.example ESMTP\r\n\xff250-mx.example\r\n250-PIPELINING\r\n250-CHUNKING\r\n250-STARTTLS\r\n250 8BITMIME\r\n"
        b"\xff220 go\r\n\xff250-mx\r\n250-AUTH PLAIN\r\n250 PIPELINING\r\n\xff235 ok\r\n\xff250 ok\r\n250 ok\r\n250 ok\r\n",
        b"\x10220 mx\r\n\xff250-mx\r\n250 PIPELINING\r\n\xff250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n\xff250 queued\r\n",
        b"\x00220 mx\r\n\xff250 mx\r\n\xff250 ok\r\n\xff250 ok\r\n\xff354 go\r\n\xff250 ok\r\n\xff250 ok\r\n",
        b"\x10220 mx\r\n\xff250-mx\r\n250 PIPELINING\r\n\xff250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n250 early\r\n",
        b"\x00220 mx\r\n250 mx\r\n250 ok\r\n250 ok\r\n354 go\r\n250 ok\r\n",
    ],
    "server_session": [
        # setup: TLS and AUTH available, relay allowed; driver bits mixed.
        bytes([0x23, 0x05]) + bytes([0, 2, 31, 4, 31, 6]) + b"\x25" + bytes([7, 16]),
        bytes([0x23, 0x85]) + bytes([0, 2, 19]) + b"500" + bytes([31, 4, 31, 8]) + b"10" + bytes([9, 31]) + b"0123456789",
        bytes([0x03, 0x00]) + bytes([0, 14, 0xf0, 0, 10, 12, 31, 2, 31, 4, 31, 6, 37]) + b"hi" + bytes([7]),
        bytes([0x03, 0x41]) + bytes([0, 11, 31, 13, 31, 0xf0]) + b"cmlnaHQ=" + bytes([31, 16]),
        bytes([0x31, 0x00]) + bytes([0, 2, 31, 4, 39, 31, 4, 31, 6, 33, 34]) + b"." + bytes([36, 7]),
        bytes([0x20, 0x80]) + bytes([0, 2, 31, 6]) + b"Subject: x" + bytes([7, 16]),
    ],
    "sasl": [b"AGFsaWNlAHJpZ2h0", b"YWxpY2U=", b"*", b"=", b"dXNlcgB1c2VyAHBhc3M=", b"!!notbase64"],
    "config": [open("../config.example.yaml", "rb").read(),
               b"listeners:\n  - address: 127.0.0.1:2525\n    mode: relay\nspool:\n  path: var/spool\n",
               b"delivery:\n  retry:\n    schedule: [5m, 30m, 2h]\n  smarthost: \"mx.example:587\"\n",
               b"limits:\n  max_message_size: 10M\n  data_timeout: 5m\ntrusted_networks: [10.0.0.0/8, \"::1\"]\n"],
    "sendmail_headers": [
        b"\x01From: a@b.example\r\nTo: \"Name, X\" <x@y.example>, z@y.example\r\nCc: group: a@b, c@d;\r\nBcc: hidden@y.example\r\n\r\nbody\r\n",
        b"\x03Subject: no from\nTo: (comment) u@v.example\n\nbody\n",
        b"\x01Bcc: only@y.example\r\n\r\n", b"\x00To: a@b\r\n folded@c\r\nSender: s@s\r\n\r\n",
    ],
    "message": [
        b"From: a@b\r\nTo: c@d\r\nSubject: x\r\n\r\nbody\r\n",
        b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b\"\r\n\r\npre\r\n--b\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nh\xc3\xa9\r\n--b\r\nContent-Type: message/rfc822\r\n\r\nSubject: in\r\n\r\n\xff\r\n--b--\r\n",
        b"Received: from x\r\n\tby y\r\nMessage-ID: <a@b>\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\n\r\n",
        b"To: undisclosed-recipients:;\r\n\r\n", b"no colon line\r\n\r\n",
    ],
    "maildrop": [
        b'{"from":null,"full_name":"Cron Daemon","extract":true,"recipients":[],"size":28}\nTo: root@x.test\r\n\r\nhello\r\n\r\n',
        b'{"from":"","full_name":null,"extract":false,"recipients":["a@b.test","c"],"size":3}\nabc',
    ],
    "users_file": [
        b"# users\nalice:$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHQ$RdescudvJCsgt3ub+b+dWRWJTmaaJObG\n",
        b"bob:$2b$04$abcdefghijklmnopqrstuuLKn1r0Cj7M4fVhYzZqD0LnkqJxG3E6\ncarol:$6$rounds=5000$salt$hash\n",
        b"dave:plain\n\n  # x\n:empty\n",
    ],
}

for target, seeds in SEEDS.items():
    d = os.path.join("corpus", target)
    os.makedirs(d, exist_ok=True)
    for i, seed in enumerate(seeds):
        with open(os.path.join(d, f"seed-{i:02}"), "wb") as f:
            f.write(seed)
