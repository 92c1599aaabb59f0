#!/bin/bash
# Runs inside the air-gapped guest, from the test disk mounted at /test (the unit
# kubeferry-test.service), at every boot of one test run. The disk holds the bundle, release.pub
# and this script, nothing else of kubeferry's. Results go to /test/results: timings (one
# "NAME SECONDS_SINCE_BOOT" per line), checks (one "ok|FAIL NAME: detail" per line), outputs
# and logs; the host reads them back with debugfs once the VM has powered off for the last time.
#
# The run spans several boots when POWEROFF_AT names power-off points ("STEP+SECONDS ...", e.g.
# "extract+3 kubernetes+1"): at boot N (N <= their count) the install is started and, SECONDS
# after its log says "step STEP: start", the VM is powered off hard (sysrq 'o': no sync, no
# unmount, the root filesystem's unwritten data lost); the host boots it again on the same root
# disk. The boot after the last power-off resumes the install and runs every check.
set -u
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
cd /test
R=/test/results
boot=$(( $(cat /test/boots 2>/dev/null || echo 0) + 1 ))
echo "$boot" >/test/boots
[ "$boot" = 1 ] && rm -rf "$R"
mkdir -p "$R"
exec >>"$R/run.log" 2>&1
set -x
source /test/params.env          # BUNDLE, ADVERTISE, READY_DEADLINE, POD_DEADLINE, INSTALL_TIMEOUT, POWEROFF_AT, REGISTRY_PASSWORD
# The bundled registry asks for credentials (htpasswd): every image the kubelet pulls through
# containerd's CRI, the control plane's and the test pod's, must come with them. The password
# goes by the environment, not on the command line.
export KUBEFERRY_REGISTRY_PASSWORD="$REGISTRY_PASSWORD"
install_args=(--trusted-key release.pub --advertise-address "$ADVERTISE" --registry-username kubeferry)
read -r -a poweroffs <<<"${POWEROFF_AT:-}"
uptime_s() { cut -d' ' -f1 /proc/uptime; }
mark() { echo "$1 $(uptime_s)" >>"$R/timings"; }
ok() { echo "ok $*" >>"$R/checks"; }
failed=0
fail() { echo "FAIL $*" >>"$R/checks"; failed=1; }
# Each line of a command's output, prefixed with the seconds since boot.
stamp() { while IFS= read -r line; do printf '%s %s\n' "$(uptime_s)" "$line"; done; }
collect() {
  set +e
  cp -a /var/lib/kubeferry/*/install.log "$R/" 2>/dev/null
  cp -a /var/lib/kubeferry/*/state.json "$R/" 2>/dev/null
  ./"$BUNDLE" status --json >"$R/status.json" 2>&1
  journalctl -b --no-pager >"$R/journal.txt" 2>&1
  journalctl -b --no-pager -u kubelet >"$R/journal-kubelet.txt" 2>&1
  journalctl -b --no-pager -u containerd >"$R/journal-containerd.txt" 2>&1
  journalctl -b --no-pager -u kubeferry-registry >"$R/journal-registry.txt" 2>&1
  journalctl -b --no-pager -u docker >"$R/journal-docker.txt" 2>&1
  systemctl --no-pager status containerd docker kubelet kubeferry-registry >"$R/systemctl-status.txt" 2>&1
  dmesg >"$R/dmesg.txt" 2>&1
  df -m / >"$R/df.txt" 2>&1
  free -m >"$R/free.txt" 2>&1
  if [ -e /etc/kubernetes/admin.conf ]; then
    kubectl get nodes -o wide >"$R/nodes.txt" 2>&1
    kubectl get pods -A -o wide >"$R/pods.txt" 2>&1
    kubectl describe nodes >"$R/describe-nodes.txt" 2>&1
    kubectl describe pods -A >"$R/describe-pods.txt" 2>&1
    kubectl get events -A --sort-by=.lastTimestamp >"$R/events.txt" 2>&1
  fi
  ctr -n k8s.io images ls >"$R/ctr-images.txt" 2>&1
  ctr -n k8s.io tasks ls >"$R/ctr-tasks.txt" 2>&1
  command -v docker >/dev/null && docker ps -a >"$R/docker-ps.txt" 2>&1
  [ -d /var/log/pods ] && cp -a /var/log/pods "$R/pods-logs"
  sync
}
collected=0
finish() { [ "$collected" = 1 ] || collect; mark end; echo "kubeferry-test: done, failed=$failed" >"$console"; echo "$failed" >"$R/failed"; sync; exit "$failed"; }

# What happens is followed live on the serial console (the host's console.log): the install's
# lines and, every minute, the containers and their logs' last lines.
console=/dev/ttyS0
[ -w "$console" ] || console=/dev/null
# Every minute: the containers' states and the last lines of each container's log. The console
# is opened anew each time: the getty's login on ttyS0 hangs up descriptors opened before it.
( set +x
  while sleep 60; do
    { echo "== $(uptime_s) containers:"; ctr -n k8s.io tasks ls 2>&1 | tail -n +2
      command -v docker >/dev/null && docker ps --format '{{.Names}} {{.Status}}' 2>&1
      [ -e /etc/kubernetes/admin.conf ] && kubectl --kubeconfig /etc/kubernetes/admin.conf get nodes,pods -A --no-headers 2>&1 | tr -s ' ' 
      for f in /var/log/pods/*/*/*.log; do [ -f "$f" ] && echo "-- $f" && tail -n 2 "$f" | cut -c1-300; done
    } >"$console" 2>&1
  done ) &
mark "boot-$boot"
# What the guest's root holds, to compare with after `uninstall --purge`. Not listed: the
# kernel's and systemd's volatile trees and the logs and state systemd keeps whatever runs.
fs_list() {
  find / -xdev \( -path /proc -o -path /sys -o -path /dev -o -path /run -o -path /tmp -o -path /var/tmp \
    -o -path /var/log/journal -o -path /var/lib/systemd -o -path /var/cache -o -path /test \) -prune -o -print | sort
}

if [ "$boot" = 1 ]; then
  uname -a >"$R/uname.txt"; cat /proc/cpuinfo | grep -m1 'model name' >>"$R/uname.txt"
  stat -fc %T /sys/fs/cgroup >>"$R/uname.txt"

  # 1. The guest has no network device but the loopback.
  links=$(ip -o link | awk -F': ' '{print $2}' | tr '\n' ' ')
  if [ "$links" = "lo " ]; then ok "only-lo: $links"; else fail "only-lo: links are '$links'"; fi
fi

# 2. A host with no network interface has no address for the API server to advertise: a dummy
#    interface with an address and a default route through it gives it one (at every boot: it
#    does not persist).
ip link add dummy0 type dummy && ip addr add "$ADVERTISE/24" dev dummy0 && ip link set dummy0 up &&
  ip route add default dev dummy0 && ok "dummy0: $ADVERTISE, default route (boot $boot)" || fail "dummy0: could not be set up (boot $boot)"
ip -o addr >"$R/ip-addr.txt"; ip route >>"$R/ip-addr.txt"

if [ "$boot" = 1 ]; then
  # 3. Nothing of ours (or of Kubernetes') is on the guest before the install.
  present=""
  for p in /var/lib/kubeferry /usr/bin/kubeadm /usr/bin/kubelet /usr/bin/kubectl /usr/local/bin/containerd \
           /usr/local/bin/runc /usr/bin/containerd /usr/sbin/runc /opt/cni /etc/kubernetes /etc/containerd \
           /usr/local/bin/dockerd /etc/docker /var/lib/docker; do
    [ -e "$p" ] && present="$present $p"
  done
  for c in containerd runc kubeadm kubelet kubectl ctr crictl docker dockerd; do command -v "$c" >/dev/null && present="$present $c"; done
  if [ -z "$present" ]; then ok "clean-guest: nothing of ours installed"; else fail "clean-guest: found$present"; fi
  ls -la /test >"$R/test-disk.txt"
  fs_list >"$R/fs-before.txt"
  sha256sum /etc/hosts /etc/fstab /etc/hostname >"$R/host-files-before.txt"

  # 4. verify
  mark verify-start
  ./"$BUNDLE" verify --trusted-key release.pub >"$R/verify.out" 2>&1; rc=$?
  mark verify-end
  [ $rc -eq 0 ] && ok "verify" || { fail "verify: exit $rc: $(tail -3 "$R/verify.out" | tr '\n' ' ')"; finish; }

  ./"$BUNDLE" install "${install_args[@]}" --dry-run >"$R/plan.out" 2>&1
fi

install_log() { ls /var/lib/kubeferry/*/install.log 2>/dev/null | sed -n 1p; }
log_lines() { local l; l=$(install_log); [ -n "$l" ] && wc -l <"$l" || echo 0; }

# 5a. A power-off point for this boot: start the install, wait for the step to start, power off.
if [ "$boot" -le "${#poweroffs[@]}" ]; then
  at=${poweroffs[$((boot - 1))]}
  step=${at%%+*}; secs=${at#*+}; [ "$secs" = "$at" ] && secs=0
  before=$(log_lines)
  mark "install-start-$boot"
  { ./"$BUNDLE" install "${install_args[@]}" 2>&1; echo "exit $?"; } |
    stamp >"$R/install-boot$boot.out" &
  # The install log may not exist yet; the step's line must come from this boot's run.
  set +x
  until l=$(install_log) && [ -n "$l" ] && tail -n +"$((before + 1))" "$l" | grep -q "^step $step: start"; do
    if grep -q '^[0-9.]* exit ' "$R/install-boot$boot.out" 2>/dev/null; then
      fail "poweroff-$boot: the install ended before step '$step' started: $(tail -3 "$R/install-boot$boot.out" | tr '\n' ' ')"
      finish
    fi
    sleep 0.2
  done
  set -x
  sleep "$secs"
  mark "poweroff-$boot"
  ok "poweroff-$boot: ${secs}s after step '$step' started"
  tail -n +"$((before + 1))" "$(install_log)" >"$R/install-boot$boot.log"
  cp /var/lib/kubeferry/*/state.json "$R/state-boot$boot.json" 2>/dev/null
  echo "kubeferry-test: powering off hard ${secs}s into step '$step'" >"$console"
  # Only the test disk is synced: whatever the root filesystem had not written is lost.
  sync -f "$R/run.log"
  echo o >/proc/sysrq-trigger
  sleep 60
  fail "poweroff-$boot: the VM is still running"
  finish
fi

# 5b. install (or its resumption after the power-offs), each output line stamped
before=$(log_lines)
mark install-start
{ timeout -k 30 "$INSTALL_TIMEOUT" ./"$BUNDLE" install "${install_args[@]}" 2>&1; echo "exit $?"; } |
  stamp | tee "$R/install.out" >"$console"
mark install-end
rc=$(tail -1 "$R/install.out" | awk '{print $3}')
if [ "$rc" = 0 ]; then ok "install: exit 0 (boot $boot)"; else fail "install: exit $rc: $(tail -5 "$R/install.out" | tr '\n' ' ')"; finish; fi
if [ "$boot" -gt 1 ]; then
  # A step that had finished before a power-off (its state recorded durably) is not run again.
  resumed=$(tail -n +"$((before + 1))" "$(install_log)")
  again=""
  for s in $(cat "$R"/install-boot*.log | sed -n 's/^step \(.*\): done$/\1/p' | sort -u); do
    grep -q "^step $s: start" <<<"$resumed" && again="$again $s"
  done
  started=$(grep -o '^step [a-z-]*: start' <<<"$resumed" | awk '{print $2}' | tr -d ':' | tr '\n' ' ')
  if [ -z "$again" ]; then ok "resume: after $((boot - 1)) power-off(s), ran only: $started"
  else fail "resume: steps done before a power-off ran again:$again"; fi
fi
install_end_epoch=$(date +%s)
export KUBECONFIG=/root/.kube/config
[ -f "$KUBECONFIG" ] || export KUBECONFIG=/etc/kubernetes/admin.conf

# 6. The node Ready, with a heartbeat or a transition newer than the end of the install (kubeadm
#    restarts the kubelet at its end: a Ready seen before that is stale; with node leases the
#    kubelet rewrites an unchanged status only every 5 minutes, so the transition counts too).
deadline=$(( $(date +%s) + READY_DEADLINE ))
ready=0
while [ "$(date +%s)" -lt "$deadline" ]; do
  read -r st hb tr < <(kubectl get nodes -o jsonpath='{range .items[*].status.conditions[?(@.type=="Ready")]}{.status} {.lastHeartbeatTime} {.lastTransitionTime}{"\n"}{end}' 2>/dev/null | sed -n 1p)
  if [ "${st:-}" = True ] && { [ "$(date -d "$hb" +%s 2>/dev/null || echo 0)" -ge "$install_end_epoch" ] ||
                               [ "$(date -d "$tr" +%s 2>/dev/null || echo 0)" -ge "$install_end_epoch" ]; }; then ready=1; break; fi
  sleep 5
done
mark node-ready
kubectl get nodes -o wide >"$R/nodes.txt" 2>&1
[ $ready = 1 ] && ok "node-ready: $(grep -v NAME "$R/nodes.txt" | tr -s ' ')" ||
  fail "node-ready: not Ready within ${READY_DEADLINE}s: $(kubectl get nodes --no-headers 2>&1 | tr -s ' ')"

# 7. Every pod Running (kube-system: etcd, apiserver, controller-manager, scheduler, kube-proxy).
deadline=$(( $(date +%s) + POD_DEADLINE ))
while [ "$(date +%s)" -lt "$deadline" ]; do
  notrunning=$(kubectl get pods -A --no-headers 2>/dev/null | awk '$4 != "Running"' | wc -l)
  total=$(kubectl get pods -A --no-headers 2>/dev/null | wc -l)
  # kubeadm's static pods and kube-proxy's DaemonSet pod: 5 (no CoreDNS in the image)
  proxy=$(kubectl get pods -A --no-headers 2>/dev/null | grep -c ' kube-proxy-')
  [ "$total" -ge 5 ] && [ "$proxy" -ge 1 ] && [ "$notrunning" = 0 ] && break
  sleep 5
done
mark pods-running
kubectl get pods -A -o wide >"$R/pods.txt" 2>&1
[ "$total" -ge 5 ] && [ "$proxy" -ge 1 ] && [ "$notrunning" = 0 ] && ok "pods-running: $total pods" ||
  fail "pods-running: $notrunning of $total not Running: $(kubectl get pods -A --no-headers 2>&1 | awk '$4 != "Running"' | tr -s ' ' | tr '\n' ';')"

# 8. A workload whose image came from the bundle runs to completion, through the pod network.
cat >"$R/test-pod.yaml" <<YAML
apiVersion: v1
kind: Pod
metadata:
  name: bundle-image-test
  namespace: default
spec:
  restartPolicy: Never
  tolerations:
  - operator: Exists
  containers:
  - name: version
    image: sea.hub:5000/library/kube-proxy:v1.20.2
    command: ["/usr/local/bin/kube-proxy", "--version"]
YAML
kubectl apply -f "$R/test-pod.yaml" >"$R/test-pod.out" 2>&1
deadline=$(( $(date +%s) + POD_DEADLINE ))
phase=""
while [ "$(date +%s)" -lt "$deadline" ]; do
  phase=$(kubectl get pod bundle-image-test -o jsonpath='{.status.phase}' 2>/dev/null)
  case "$phase" in Succeeded|Failed) break ;; esac
  sleep 5
done
mark test-pod-done
kubectl logs bundle-image-test >>"$R/test-pod.out" 2>&1
kubectl describe pod bundle-image-test >>"$R/test-pod.out" 2>&1
if [ "$phase" = Succeeded ] && grep -q 'v1.20.2' "$R/test-pod.out"; then ok "test-pod: Succeeded, $(kubectl logs bundle-image-test 2>&1)"
else fail "test-pod: phase '$phase'"; fi

# The registry refuses a request without credentials: the pulls above gave them.
anonymous=$( (exec 3<>/dev/tcp/sea.hub/5000 && printf 'GET /v2/ HTTP/1.0\r\nHost: sea.hub:5000\r\n\r\n' >&3 &&
  head -1 <&3 | tr -d '\r') 2>/dev/null)
case "$anonymous" in
  *" 401 "*) ok "registry-auth: GET /v2/ without credentials: $anonymous; the kubelet's pulls through the CRI gave them" ;;
  *) fail "registry-auth: GET /v2/ without credentials answered '${anonymous:-nothing}'" ;;
esac

# 9. install again on a finished node: nothing changes.
cp /var/lib/kubeferry/*/state.json "$R/state-before-rerun.json" 2>/dev/null
./"$BUNDLE" install "${install_args[@]}" >"$R/install-again.out" 2>&1; rc=$?
mark install-again-end
if [ $rc = 0 ] && cmp -s "$R/state-before-rerun.json" /var/lib/kubeferry/*/state.json; then ok "install-again: exit 0, state unchanged"
else fail "install-again: exit $rc, state $(cmp -s "$R/state-before-rerun.json" /var/lib/kubeferry/*/state.json && echo unchanged || echo changed)"; fi

# 10. uninstall --purge: nothing of ours is left, nothing of the host's is gone or changed.
collect
collected=1
mark uninstall-start
./"$BUNDLE" uninstall --purge >"$R/uninstall.out" 2>&1; rc=$?
mark uninstall-end
[ $rc = 0 ] && ok "uninstall --purge: exit 0" || fail "uninstall --purge: exit $rc: $(tail -3 "$R/uninstall.out" | tr '\n' ' ')"
fs_list >"$R/fs-after.txt"
comm -13 "$R/fs-before.txt" "$R/fs-after.txt" >"$R/left-after-purge.txt"
comm -23 "$R/fs-before.txt" "$R/fs-after.txt" >"$R/gone-after-purge.txt"
if [ -s "$R/left-after-purge.txt" ]; then
  fail "purge-left: $(wc -l <"$R/left-after-purge.txt") paths left: $(head -25 "$R/left-after-purge.txt" | tr '\n' ' ')"
else ok "purge-left: nothing left of ours"; fi
if [ -s "$R/gone-after-purge.txt" ]; then
  fail "purge-gone: $(wc -l <"$R/gone-after-purge.txt") paths of the host gone: $(head -25 "$R/gone-after-purge.txt" | tr '\n' ' ')"
else ok "purge-gone: nothing of the host's removed"; fi
if sha256sum -c --quiet "$R/host-files-before.txt" >"$R/host-files-after.txt" 2>&1; then ok "purge-host-files: /etc/hosts, /etc/fstab, /etc/hostname as before"
else fail "purge-host-files: $(tr '\n' ' ' <"$R/host-files-after.txt")"; fi
for u in containerd docker kubelet kubeferry-registry; do
  systemctl is-active --quiet "$u" && fail "purge-units: $u still active"
done
# Forget where this script found them before: bash's hash table would still name removed files.
hash -r
left_commands=$(for c in kubeadm kubelet kubectl containerd ctr runc docker dockerd; do command -v "$c" || true; done)
printf '%s\n' "$left_commands" >"$R/commands-after.txt"
if [ -n "$left_commands" ]; then
  fail "purge-commands: $(echo $left_commands)"
else
  ok "purge-commands: no kubeadm, kubelet, kubectl, containerd, ctr, runc, docker or dockerd on the PATH"
fi
finish
