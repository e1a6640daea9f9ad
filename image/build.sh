#!/usr/bin/env bash
# Builds the Sluice appliance: a bootable x86_64 GPT disk image (UEFI, systemd-boot) with
# Debian 12 minbase, linux-image-amd64 (drivers for real hardware too), systemd-networkd (DHCP
# on any ethernet), systemd-timesyncd, persistent journald, the release `sluice` binary, its
# units, manual pages, completions and the default config. Run as root. Output: target/image/sluice.raw and .qcow2.
#
# Nothing is mounted and no loop device is used: mmdebstrap fills a folder, `mkfs.ext4 -d`
# turns it into the root file system, mtools fills the EFI system partition, sfdisk writes
# the partition table and dd puts the two file systems in place.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
out="$repo/target/image"
work="$out/work"
root="$work/root"
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
esp_mib=256
root_mib=${ROOT_MIB:-1536}

[ "$(id -u)" -eq 0 ] || { echo "image/build.sh must run as root" >&2; exit 1; }
for tool in mmdebstrap mkfs.ext4 mkfs.vfat mcopy mmd sfdisk qemu-img; do
  command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install mmdebstrap e2fsprogs dosfstools mtools fdisk qemu-utils)" >&2; exit 1; }
done
started=$SECONDS
(cd "$repo" && cargo build --release --quiet)

rm -rf "$work"
mkdir -p "$work" "$out"

echo "== Debian 12 root file system"
mmdebstrap --variant=minbase --quiet \
  --include=linux-image-amd64,systemd,systemd-sysv,systemd-timesyncd,systemd-boot-efi,udev,dbus,iproute2,kmod,ca-certificates,netbase,procps,logrotate,man-db,bash-completion \
  --customize-hook='chroot "$1" systemctl enable systemd-networkd systemd-timesyncd' \
  bookworm "$root" "$mirror"

echo "== Sluice"
install -m 0755 "$repo/target/release/sluice" "$root/usr/bin/sluice"
ln -sf /usr/bin/sluice "$root/usr/sbin/sendmail"
ln -sf /usr/bin/sluice "$root/usr/bin/mailq"
install -m 0644 "$repo/systemd/sluice.service" "$root/usr/lib/systemd/system/sluice.service"
install -D -m 0644 "$repo/systemd/sluice.sysusers" "$root/usr/lib/sysusers.d/sluice.conf"
install -D -m 0644 "$repo/systemd/sluice.tmpfiles" "$root/usr/lib/tmpfiles.d/sluice.conf"
install -D -m 0644 "$repo/image/config.yaml" "$root/etc/sluice/config.yaml"
install -m 0644 /dev/null "$root/etc/sluice/users"
install -D -m 0644 "$repo/contrib/logrotate/sluice" "$root/etc/logrotate.d/sluice"
# Manual pages and shell completions, generated from the binary's own command definitions.
"$repo/target/release/sluice" generate man "$work/man"
gzip -9n "$work/man"/*.1
install -d "$root/usr/share/man/man1"
install -m 0644 "$work/man"/*.1.gz "$root/usr/share/man/man1/"
"$repo/target/release/sluice" generate completions "$work/completions"
install -D -m 0644 "$work/completions/sluice.bash" "$root/usr/share/bash-completion/completions/sluice"
install -D -m 0644 "$work/completions/_sluice" "$root/usr/share/zsh/vendor-completions/_sluice"
install -D -m 0644 "$work/completions/sluice.fish" "$root/usr/share/fish/vendor_completions.d/sluice.fish"
install -D -m 0644 "$repo/image/seed.service" "$root/usr/lib/systemd/system/sluice-seed.service"
install -D -m 0755 "$repo/image/seed.sh" "$root/usr/lib/sluice/seed.sh"
ln -sf /usr/lib/systemd/system/sluice.service "$root/etc/systemd/system/multi-user.target.wants/sluice.service"
ln -sf /usr/lib/systemd/system/sluice-seed.service "$root/etc/systemd/system/multi-user.target.wants/sluice-seed.service"
chroot "$root" systemd-sysusers >/dev/null
chroot "$root" sh -c 'chown root:sluice /etc/sluice/users && chmod 0640 /etc/sluice/users'
# sendmail's maildrop (Postfix's setgid postdrop): see systemd/sluice.sysusers and .tmpfiles.
chroot "$root" sh -c 'chgrp sluicedrop /usr/bin/sluice && chmod 2755 /usr/bin/sluice'

echo "== system settings"
echo sluice > "$root/etc/hostname"
printf '127.0.0.1\tlocalhost\n127.0.1.1\tsluice.localdomain sluice\n' > "$root/etc/hosts"
cat > "$root/etc/systemd/network/80-ethernet.network" <<'EOF'
[Match]
Type=ether

[Network]
DHCP=yes
EOF
mkdir -p "$root/etc/systemd/journald.conf.d" "$root/var/log/journal"
cat > "$root/etc/systemd/journald.conf.d/sluice.conf" <<'EOF'
# Every accepted message is logged with its queue id, identity, client and Message-ID: keep
# the journal on disk for at least a week (spamops traceability), capped by size.
[Journal]
Storage=persistent
MaxRetentionSec=0
SystemMaxUse=2G
EOF
# The root password is locked: operators log in on the console after setting one with
# `systemd-firstboot`-style provisioning, or over the serial console in a lab.
chroot "$root" passwd -l root >/dev/null
# On first boot the root partition grows to fill the disk (systemd-repart), then its file
# system (x-systemd.growfs): the image is small, the disk it is written to is not.
echo 'LABEL=sluice-root / ext4 defaults,noatime,x-systemd.growfs 0 1' > "$root/etc/fstab"
mkdir -p "$root/usr/lib/repart.d"
printf '[Partition]\nType=root-x86-64\n' > "$root/usr/lib/repart.d/50-root.conf"
echo 'LABEL=SLUICE-ESP /boot/efi vfat umask=0077,noauto,nofail 0 2' >> "$root/etc/fstab"
mkdir -p "$root/boot/efi"
rm -f "$root/etc/machine-id" && touch "$root/etc/machine-id"
chroot "$root" apt-get clean
rm -rf "$root/var/lib/apt/lists"/* "$root/var/cache/apt"/*.bin

echo "== EFI system partition (systemd-boot)"
kernel=$(ls "$root"/boot/vmlinuz-* | sort -V | tail -n 1)
initrd=$(ls "$root"/boot/initrd.img-* | sort -V | tail -n 1)
esp="$work/esp.img"
rm -f "$esp"
mkfs.vfat -C -n SLUICE-ESP "$esp" $((esp_mib * 1024)) >/dev/null
export MTOOLS_SKIP_CHECK=1
mmd -i "$esp" ::/EFI ::/EFI/BOOT ::/loader ::/loader/entries ::/sluice
mcopy -i "$esp" "$root/usr/lib/systemd/boot/efi/systemd-bootx64.efi" ::/EFI/BOOT/BOOTX64.EFI
mcopy -i "$esp" "$kernel" ::/sluice/vmlinuz
mcopy -i "$esp" "$initrd" ::/sluice/initrd.img
printf 'default sluice.conf\ntimeout 0\n' > "$work/loader.conf"
cat > "$work/sluice.conf" <<'EOF'
title   Sluice SMTP relay
linux   /sluice/vmlinuz
initrd  /sluice/initrd.img
options root=LABEL=sluice-root rw quiet console=tty0 console=ttyS0,115200
EOF
mcopy -i "$esp" "$work/loader.conf" ::/loader/loader.conf
mcopy -i "$esp" "$work/sluice.conf" ::/loader/entries/sluice.conf

echo "== root file system"
rootfs="$work/root.img"
rm -f "$rootfs"
mkfs.ext4 -q -L sluice-root -d "$root" "$rootfs" "${root_mib}M"

echo "== disk"
raw="$out/sluice.raw"
rm -f "$raw"
# 1 MiB of partition table, the ESP, the root, 1 MiB for the backup table.
truncate -s $((1 + esp_mib + root_mib + 1))M "$raw"
sfdisk --quiet "$raw" <<EOF
label: gpt
start=1MiB, size=${esp_mib}MiB, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name=esp
start=$((1 + esp_mib))MiB, size=${root_mib}MiB, type=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709, name=root
EOF
dd if="$esp" of="$raw" bs=1M seek=1 conv=notrunc status=none
dd if="$rootfs" of="$raw" bs=1M seek=$((1 + esp_mib)) conv=notrunc status=none
qemu-img convert -c -O qcow2 "$raw" "$out/sluice.qcow2"
rm -rf "$work"

echo "image: $raw ($(du -h --apparent-size "$raw" | cut -f1) raw, $(du -h "$raw" | cut -f1) on disk), $out/sluice.qcow2 ($(du -h "$out/sluice.qcow2" | cut -f1) compressed); built in $((SECONDS - started)) s"
