#!/bin/sh
# The node manifest's work (manifests/k8s-node-debian.yaml with its phases, then kib's sysprep),
# written by hand as plain shell, run as root inside the image: by baseline-node.sh through
# chroot, and by `virt-customize --run` in libguestfs's appliance. scripts/bench.sh compare times
# both beside kib. Keep it in step with the manifest and phases/.
set -eu
export DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8 PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

# No service starts while packages install.
printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
chmod 0755 /usr/sbin/policy-rc.d

# phases/node/kernel.yaml
mkdir -p /etc/modules-load.d /etc/sysctl.d
printf 'overlay\nbr_netfilter\n' > /etc/modules-load.d/kubernetes.conf
cat > /etc/sysctl.d/99-kubernetes.conf <<'SYSCTL'
net.bridge.bridge-nf-call-iptables = 1
net.bridge.bridge-nf-call-ip6tables = 1
net.ipv4.ip_forward = 1
net.ipv6.conf.all.forwarding = 1
net.ipv6.conf.all.disable_ipv6 = 0
net.ipv4.tcp_congestion_control = bbr
vm.overcommit_memory = 1
kernel.panic = 10
kernel.panic_on_oops = 1
fs.inotify.max_user_instances = 8192
fs.inotify.max_user_watches = 524288
SYSCTL
printf 'tcp_bbr\n' > /etc/modules-load.d/bbr.conf
awk '!/^[[:space:]]*#/ && $3 == "swap" { print "# disabled (kubelet needs swap off): " $0; next } { print }' /etc/fstab > /etc/fstab.new
cat /etc/fstab.new > /etc/fstab
rm -f /etc/fstab.new

# phases/node/no-auto-updates.yaml
systemctl mask apt-daily.timer apt-daily.service apt-daily-upgrade.timer apt-daily-upgrade.service unattended-upgrades.service

# phases/node/base-packages-debian.yaml and phases/runtime/containerd-debian.yaml
apt-get -q update
apt-get -q -y -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold install --no-install-recommends \
  conntrack socat ebtables ethtool iptables jq curl gnupg chrony ca-certificates apparmor
apt-get -q -y -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold install --no-install-recommends \
  containerd runc containernetworking-plugins
mkdir -p /opt/cni/bin
for plugin in /usr/lib/cni/*; do ln -sfn "$plugin" /opt/cni/bin/; done
mkdir -p /etc/containerd/conf.d /etc/systemd/system/containerd.service.d
cat > /etc/containerd/config.toml <<'TOML'
version = 2
imports = ["/etc/containerd/conf.d/*.toml"]

[plugins]
  [plugins."io.containerd.grpc.v1.cri"]
    sandbox_image = "registry.k8s.io/pause:3.9"
    [plugins."io.containerd.grpc.v1.cri".cni]
      bin_dir = "/opt/cni/bin"
      conf_dir = "/etc/cni/net.d"
    [plugins."io.containerd.grpc.v1.cri".containerd]
      default_runtime_name = "runc"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
        [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
          SystemdCgroup = true
    [plugins."io.containerd.grpc.v1.cri".registry]
      config_path = "/etc/containerd/certs.d"
TOML
echo 'Drop-in containerd configuration (*.toml) imported by /etc/containerd/config.toml.' > /etc/containerd/conf.d/README
printf '[Service]\nLimitNOFILE=1048576\nTasksMax=infinity\nOOMScoreAdjust=-999\n' > /etc/systemd/system/containerd.service.d/10-kubernetes.conf
printf 'runtime-endpoint: unix:///var/run/containerd/containerd.sock\nimage-endpoint: unix:///var/run/containerd/containerd.sock\ntimeout: 10\n' > /etc/crictl.yaml
systemctl enable containerd.service

# manifests/k8s-node-debian.yaml's own step
printf 'KUBELET_EXTRA_ARGS=\n' > /etc/default/kubelet

# Sysprep, as kib's (kib sysprep-operations)
: > /etc/machine-id
[ -L /var/lib/dbus/machine-id ] || rm -f /var/lib/dbus/machine-id
rm -f /etc/ssh/ssh_host_*
rm -f /root/.ssh/authorized_keys /home/*/.ssh/authorized_keys
if command -v cloud-init >/dev/null; then cloud-init clean --logs; fi
find /var/lib/apt/lists -mindepth 1 -maxdepth 1 ! -name lock ! -name partial -exec rm -rf {} +
find /var/cache/apt/archives -mindepth 1 -maxdepth 1 ! -name lock ! -name partial -exec rm -rf {} +
rm -f /var/cache/apt/*.bin
find /tmp /var/tmp -mindepth 1 -delete
find /var/log -type f \( -name '*.gz' -o -name '*.[0-9]' -o -name '*.old' \) -delete
find /var/log -type f -exec truncate -s 0 {} +
rm -rf /var/log/journal/*
rm -f /root/.bash_history /home/*/.bash_history
rm -f /etc/udev/rules.d/70-persistent-net.rules
: > /etc/hostname
printf '127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n' > /etc/hosts
dpkg-query -W -f '${Package} hold\n' | dpkg --set-selections
rm -f /usr/sbin/policy-rc.d
