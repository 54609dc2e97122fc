#!/bin/bash
# Entrypoint of a fresh testbed machine: only sshd. Keys for root and `deploy`.
set -u
mkdir -p /run/sshd
[ -e /etc/ssh/ssh_host_ed25519_key ] || ssh-keygen -q -t ed25519 -N '' -f /etc/ssh/ssh_host_ed25519_key
if [ -n "${SSH_AUTHORIZED_KEY:-}" ]; then
    for home in /root /home/deploy; do
        user=$(stat -c %U "$home")
        mkdir -p "$home/.ssh"
        grep -qxF "$SSH_AUTHORIZED_KEY" "$home/.ssh/authorized_keys" 2>/dev/null \
            || echo "$SSH_AUTHORIZED_KEY" >> "$home/.ssh/authorized_keys"
        chown -R "$user:" "$home/.ssh"
        chmod 0700 "$home/.ssh"
        chmod 0600 "$home/.ssh/authorized_keys"
    done
fi
. /usr/local/lib/testbed/engine-config.sh
exec /usr/sbin/sshd -D -e
