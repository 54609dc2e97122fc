#!/bin/bash
# Entrypoint of a testbed Docker host: dockerd in the background, sshd in the
# foreground; on SIGTERM (docker stop) stop dockerd cleanly so nested containers
# and their restart policies behave as on a real machine that shuts down.
set -u
mkdir -p /run/sshd /root/.ssh
chmod 0700 /root/.ssh
[ -e /etc/ssh/ssh_host_ed25519_key ] || ssh-keygen -q -t ed25519 -N '' -f /etc/ssh/ssh_host_ed25519_key
if [ -n "${SSH_AUTHORIZED_KEY:-}" ]; then
    grep -qxF "$SSH_AUTHORIZED_KEY" /root/.ssh/authorized_keys 2>/dev/null \
        || echo "$SSH_AUTHORIZED_KEY" >> /root/.ssh/authorized_keys
    chmod 0600 /root/.ssh/authorized_keys
fi
. /usr/local/lib/testbed/engine-config.sh
# After `docker stop` + `docker start` the old pid files are still on disk.
rm -f /var/run/docker.pid /run/docker/containerd/containerd.pid /var/run/docker.sock
dockerd >>/var/log/dockerd.log 2>&1 &
dockerd_pid=$!
/usr/sbin/sshd -D -e &
sshd_pid=$!
shutdown() {
    kill -TERM "$sshd_pid" 2>/dev/null
    kill -TERM "$dockerd_pid" 2>/dev/null
    wait "$dockerd_pid" 2>/dev/null
    exit 0
}
trap shutdown TERM INT
# Exit (and so stop the host) if sshd dies; dockerd dying is left to the tests to see.
wait "$sshd_pid"
echo "sshd exited" >&2
kill -TERM "$dockerd_pid" 2>/dev/null
wait "$dockerd_pid" 2>/dev/null
exit 1
