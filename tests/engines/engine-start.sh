#!/bin/sh
# Runs inside a new engine container (engine.py feeds it to `sh -s` after setting ENGINE, IP, TLS,
# AUTHORIZED_KEY and WAIT_S): writable cgroups, sshd, TLS material, dockerd, and a wait until dockerd
# answers (through the TLS listener when there is one, which also proves the certificate's address).
# Progress and errors go to stderr; fd 3 (the exec's stdout) carries only what the host needs back:
# a line "ssh-host-key TYPE KEY", and "file NAME" lines each followed by that client TLS file.
set -eu
exec 3>&1 1>&2
if [ "$(stat -fc %T /sys/fs/cgroup)" = cgroup2fs ]; then
  umount /sys/fs/cgroup; mount -t cgroup2 cgroup2 /sys/fs/cgroup
else
  umount -R /sys/fs/cgroup; mount -t tmpfs tmpfs /sys/fs/cgroup
  for sub in cpu cpuacct cpuset memory devices freezer blkio pids; do
    mkdir -p /sys/fs/cgroup/$sub; mount -t cgroup -o $sub cgroup /sys/fs/cgroup/$sub
  done
  mkdir -p /sys/fs/cgroup/systemd; mount -t cgroup -o none,name=systemd cgroup /sys/fs/cgroup/systemd
fi
set -- dockerd --host unix:///var/run/docker.sock
probe=""
if [ -n "$AUTHORIZED_KEY" ]; then
  ssh-keygen -q -t ed25519 -N '' -f /etc/ssh/ssh_host_ed25519_key
  install -d -m 700 /root/.ssh
  printf '%s\n' "$AUTHORIZED_KEY" >/root/.ssh/authorized_keys
  chmod 600 /root/.ssh/authorized_keys
  mkdir -p /run/sshd
  /usr/sbin/sshd -E /var/log/sshd.log </dev/null 3>&-
fi
if [ "$TLS" = 1 ]; then
  d=/etc/docker/tls c=/root/client
  mkdir -p $d $c
  key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }
  key $d/ca-key.pem
  openssl req -x509 -new -key $d/ca-key.pem -days 7 -subj "/CN=compose-agent test CA $ENGINE" \
    -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign -out $d/ca.pem
  sign() {  # sign KEY CSR_SUBJECT EXTENSIONS OUT
    openssl req -new -key "$1" -subj "$2" -out "$4.csr"
    printf '%b' "$3" >"$4.ext"
    openssl x509 -req -in "$4.csr" -CA $d/ca.pem -CAkey $d/ca-key.pem -CAcreateserial -days 7 \
      -extfile "$4.ext" -out "$4" 2>/dev/null
    rm -f "$4.csr" "$4.ext"
  }
  key $d/server-key.pem
  sign $d/server-key.pem "/CN=$ENGINE" \
    "subjectAltName=IP:$IP,DNS:$ENGINE\nextendedKeyUsage=serverAuth\nkeyUsage=critical,digitalSignature\n" \
    $d/server-cert.pem
  key $c/key.pem
  sign $c/key.pem "/CN=compose-agent-test-client" \
    "extendedKeyUsage=clientAuth\nkeyUsage=critical,digitalSignature\n" $c/cert.pem
  cp $d/ca.pem $c/ca.pem
  set -- "$@" --host tcp://0.0.0.0:2376 --tlsverify \
    --tlscacert $d/ca.pem --tlscert $d/server-cert.pem --tlskey $d/server-key.pem
  probe="--tlsverify --tlscacert $c/ca.pem --tlscert $c/cert.pem --tlskey $c/key.pem -H tcp://$IP:2376"
fi
nohup "$@" </dev/null >/var/log/dockerd.log 2>&1 3>&- &
pid=$!
end=$(( $(date +%s) + WAIT_S ))
until docker $probe version >/dev/null 2>&1; do
  # A dead child stays a zombie of this shell until it exits, and kill -0 succeeds on a zombie.
  if ! kill -0 $pid 2>/dev/null || grep -q '^State:.*Z' /proc/$pid/status 2>/dev/null; then
    echo "dockerd exited; the end of its log:"; tail -n 30 /var/log/dockerd.log; exit 1
  fi
  if [ "$(date +%s)" -ge "$end" ]; then
    echo "dockerd did not answer within $WAIT_S s; the end of its log:"; tail -n 30 /var/log/dockerd.log; exit 1
  fi
  sleep 0.05
done
if [ -n "$AUTHORIZED_KEY" ]; then echo "ssh-host-key $(cut -d' ' -f1,2 /etc/ssh/ssh_host_ed25519_key.pub)" >&3; fi
if [ "$TLS" = 1 ]; then
  for f in ca.pem cert.pem key.pem; do echo "file $f" >&3; cat $c/$f >&3; done
  rm -rf $c
fi
