#!/bin/sh
# Provisioning without a console: if a disk labelled SLUICE-SEED (vfat or ext4) is attached,
# copy its config.yaml and users into /etc/sluice before Sluice starts. The boot test uses it
# to point the appliance at a sink on the host; an operator can use it the same way.
udevadm settle --timeout=10 2>/dev/null || true
dev=/dev/disk/by-label/SLUICE-SEED
[ -e "$dev" ] || exit 0
dir=$(mktemp -d)
mount -o ro "$dev" "$dir" || { rmdir "$dir"; exit 0; }
# The config holds no secrets (passwords live in files it names) and every local user's
# sendmail reads it to find the daemon's socket and the maildrop; the users file is secret.
for f in config.yaml:0644 users:0640; do
  name=${f%%:*}
  if [ -f "$dir/$name" ]; then
    install -m "${f##*:}" -o root -g sluice "$dir/$name" "/etc/sluice/$name"
    echo "sluice-seed: installed /etc/sluice/$name"
  fi
done
# A drop-in for sluice.service (the boot test sends the daemon's log to the serial console).
if [ -f "$dir/sluice.service.conf" ]; then
  mkdir -p /run/systemd/system/sluice.service.d
  cp "$dir/sluice.service.conf" /run/systemd/system/sluice.service.d/seed.conf
  systemctl daemon-reload
  echo "sluice-seed: installed a drop-in for sluice.service"
fi
umount "$dir"
rmdir "$dir"
