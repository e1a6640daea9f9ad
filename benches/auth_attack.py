"""Password guessing against a running Sluice, for benches/auth_attack.sh.

ATTEMPTS parallel AUTH PLAIN attempts with wrong passwords, spread over the attacking
addresses, while the daemon's RSS is sampled; a moment after they start, a real user logs in
from another address and the time to its 235 is measured. Prints one summary line.
Usage: auth_attack.py PORT PID ATTEMPTS REAL_USER REAL_PASSWORD ATTACKER_IP...
"""
import base64
import collections
import smtplib
import sys
import threading
import time

port, pid, attempts = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
real_user, real_password = sys.argv[4], sys.argv[5]
attackers = sys.argv[6:]


def rss_kib():
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def auth(source, user, password):
    """The AUTH reply code, or what stopped the attempt before it."""
    try:
        s = smtplib.SMTP("127.0.0.1", port, source_address=(source, 0), timeout=120)
    except smtplib.SMTPConnectError as e:
        return f"connect {e.smtp_code}"
    except OSError as e:
        return f"connect {type(e).__name__}"
    try:
        s.ehlo("guess.test")
        token = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
        code, _ = s.docmd("AUTH", "PLAIN " + token)
        return str(code)
    except smtplib.SMTPServerDisconnected:
        return "disconnected"
    except OSError as e:
        return type(e).__name__
    finally:
        try:
            s.close()
        except OSError:
            pass


results = collections.Counter()
lock = threading.Lock()
peak = [rss_kib()]
idle = peak[0]
done = threading.Event()


def sample():
    while not done.is_set():
        peak[0] = max(peak[0], rss_kib())
        time.sleep(0.05)


def guess(i):
    code = auth(attackers[i % len(attackers)], f"user{i % 7}", f"wrong{i}")
    with lock:
        results[code] += 1


sampler = threading.Thread(target=sample)
sampler.start()
threads = [threading.Thread(target=guess, args=(i,)) for i in range(attempts)]
start = time.monotonic()
for t in threads:
    t.start()
time.sleep(0.2)
real_start = time.monotonic()
real = auth("127.0.0.9", real_user, real_password)
real_s = time.monotonic() - real_start
for t in threads:
    t.join()
elapsed = time.monotonic() - start
done.set()
sampler.join()
answers = ", ".join(f"{k}: {v}" for k, v in sorted(results.items()))
print(
    f"auth attack: {attempts} guesses from {len(attackers)} addresses in {elapsed:.1f} s ({answers}); "
    f"real user from another address: {real} in {real_s:.2f} s; daemon RSS idle {idle // 1024} MiB, peak {peak[0] // 1024} MiB"
)
sys.exit(0 if real == "235" else 1)
