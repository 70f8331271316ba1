# tests/vm/lib.sh: the host half of the VM test, sourced by tests/vm/run-test and tests/vm/boot.
#
#   vm_start IMGDIR STATEDIR     boot the image on a copy-on-write overlay, in the background
#   vm_wait_boot N [TIMEOUT]     wait until the guest has finished its Nth boot (1 = first)
#   vm_exec [-t SECS] 'SCRIPT'   run a bash script in the guest as root; prints its output,
#                                returns its exit status
#   vm_put FILE [NAME]           copy a file into the share; the guest sees it in /mnt/host/
#   vm_reboot                    reboot the guest and wait for the boot to finish
#   vm_stop                      power off (kill qemu if it does not stop in 60 s)
#   vm_poweron                   after vm_stop: a new qemu on the same overlay (the box switched
#                                off and on again); then vm_wait_boot
#
# The guest half (tests/vm/guest/usr/local/sbin/coolstream-vm-agent, started by systemd)
# announces each finished boot on the serial console and in the share, then runs the jobs
# the host drops in the share's jobs/ directory. The share is a 9p (virtio) export of
# STATEDIR/share; the serial console goes to STATEDIR/console.log.
#
# Settings (environment): VM_SMP (default 2), VM_MEM (512), VM_HTTP_PORT (host port that
# forwards to the guest's 8080; default: a free one), VM_FWD (more hostfwd rules, comma-
# separated, e.g. tcp:127.0.0.1:2222-:22), VM_ARCH (arm64, default: qemu-system-aarch64 -cpu
# cortex-a53; armhf: qemu-system-arm -cpu cortex-a15, the image VM_ARCH=armhf build-image makes).

VM_SMP=${VM_SMP:-2}
VM_MEM=${VM_MEM:-512}
VM_ARCH=${VM_ARCH:-arm64}
case "$VM_ARCH" in
  arm64) VM_QEMU=(qemu-system-aarch64 -M virt -cpu cortex-a53) ;;
  armhf) VM_QEMU=(qemu-system-arm -M virt -cpu cortex-a15) ;;
  *) printf '[vm] error: VM_ARCH=%s: arm64 or armhf\n' "$VM_ARCH" >&2; exit 2 ;;
esac
VM_PID=
VM_STATE=

vm_log() { printf '[vm %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
vm_die() { printf '[vm] error: %s\n' "$*" >&2; exit 1; }

vm_free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

vm_start() {
  local img=$1 state=$2
  [ -e "$img/.done" ] || vm_die "no image in $img (run tests/vm/build-image)"
  command -v "${VM_QEMU[0]}" >/dev/null || vm_die "${VM_QEMU[0]} missing (package qemu-system-arm)"
  VM_STATE=$state
  mkdir -p "$state/share/jobs"
  rm -f "$state/share/jobs/"* "$state/share/boots.log" "$state/console.log" "$state/qemu.log"
  qemu-img create -q -f qcow2 -b "$img/disk.img" -F raw "$state/disk.qcow2"
  VM_HTTP_PORT=${VM_HTTP_PORT:-$(vm_free_port)}
  local fwd="hostfwd=tcp:127.0.0.1:$VM_HTTP_PORT-:8080"
  if [ -n "${VM_FWD:-}" ]; then
    local r; IFS=, read -ra r <<<"$VM_FWD"; for x in "${r[@]}"; do fwd+=",hostfwd=$x"; done
  fi
  # romfile= : no PXE option ROM for the NIC (the kernel is given directly); without it qemu
  # needs efi-virtio.rom from ipxe-qemu, which a --no-install-recommends install lacks.
  VM_CMD=("${VM_QEMU[@]}" -m "$VM_MEM" -smp "$VM_SMP"
    -kernel "$img/vmlinuz" -initrd "$img/initrd.img"
    -append "root=/dev/vda rw console=ttyAMA0 net.ifnames=0 systemd.show_status=auto"
    -drive "if=none,id=hd0,file=$state/disk.qcow2,format=qcow2"
    -device virtio-blk-pci,drive=hd0
    -netdev "user,id=net0,$fwd" -device virtio-net-pci,netdev=net0,romfile=
    -fsdev "local,id=fs0,path=$state/share,security_model=none"
    -device virtio-9p-pci,fsdev=fs0,mount_tag=host0
    -device virtio-rng-pci)
  vm_log "boot: ${VM_CMD[*]}"
  vm_launch
}

vm_launch() {
  # The console file is appended to, so that a power cycle (vm_poweron) keeps the earlier boots.
  "${VM_CMD[@]}" -display none -monitor none \
    -chardev "file,id=ser0,path=$VM_STATE/console.log,append=on" -serial chardev:ser0 \
    >> "$VM_STATE/qemu.log" 2>&1 &
  VM_PID=$!
  echo "$VM_PID" > "$VM_STATE/qemu.pid"
  VM_T0=$(date +%s.%N)
  vm_log "qemu pid $VM_PID; guest :8080 is 127.0.0.1:$VM_HTTP_PORT; console $VM_STATE/console.log"
}

vm_poweron() {
  vm_alive && vm_die "vm_poweron: qemu is still running"
  vm_launch
}

vm_alive() { [ -n "$VM_PID" ] && kill -0 "$VM_PID" 2>/dev/null; }

vm_boots() { [ -e "$VM_STATE/share/boots.log" ] && awk '{print $3}' "$VM_STATE/share/boots.log" | sort -u | wc -l || echo 0; }

# vm_wait_boot N [TIMEOUT]: sets VM_BOOT_LINE to the guest's announcement.
vm_wait_boot() {
  local n=$1 timeout=${2:-600} t0; t0=$(date +%s)
  while [ "$(vm_boots)" -lt "$n" ]; do
    vm_alive || { tail -n 40 "$VM_STATE/console.log" >&2; cat "$VM_STATE/qemu.log" >&2; vm_die "qemu exited during boot"; }
    if [ $(( $(date +%s) - t0 )) -ge "$timeout" ]; then
      tail -n 40 "$VM_STATE/console.log" >&2; vm_die "boot $n not finished after ${timeout}s"
    fi
    sleep 0.5
  done
  VM_BOOT_LINE=$(tail -n1 "$VM_STATE/share/boots.log")
  case "$VM_BOOT_LINE" in
    *state=running*) ;;
    *) vm_log "guest is not cleanly up: $VM_BOOT_LINE"; vm_exec 'systemctl --failed --no-legend' >&2 || true ;;
  esac
}

# vm_submit 'SCRIPT': queues a job, sets VM_JOBPATH; vm_exec waits for it.
vm_submit() {
  # Named by the clock (fixed width, so the agent's sorted glob runs them in order): a
  # counter would not survive vm_exec being called in a $(...) subshell.
  local n; n=$(date +%s%N)
  VM_JOBPATH="$VM_STATE/share/jobs/$n"
  printf 'set -euo pipefail\n%s\n' "$1" > "$VM_JOBPATH.tmp"
  mv "$VM_JOBPATH.tmp" "$VM_JOBPATH.sh"
}

vm_exec() {
  local timeout=300
  if [ "$1" = -t ]; then timeout=$2; shift 2; fi
  vm_submit "$1"
  local t0; t0=$(date +%s)
  while [ ! -e "$VM_JOBPATH.rc" ]; do
    vm_alive || vm_die "qemu exited while running job $VM_JOBPATH.sh"
    [ $(( $(date +%s) - t0 )) -lt "$timeout" ] || vm_die "job $VM_JOBPATH.sh: no answer after ${timeout}s"
    sleep 0.2
  done
  cat "$VM_JOBPATH.out"
  return "$(cat "$VM_JOBPATH.rc")"
}

vm_put() {
  cp "$1" "$VM_STATE/share/${2:-$(basename "$1")}"
}

vm_reboot() {
  local n; n=$(vm_boots)
  vm_submit 'systemctl reboot'
  vm_wait_boot $((n + 1)) "${1:-600}"
}

vm_stop() {
  vm_alive || return 0
  vm_submit 'systemctl poweroff'
  local i
  for i in $(seq 1 120); do vm_alive || break; sleep 0.5; done
  if vm_alive; then vm_log "qemu still running after poweroff; killing it"; kill "$VM_PID" 2>/dev/null || true; fi
  wait "$VM_PID" 2>/dev/null || true
  VM_PID=
}

# For traps: no poweroff, just make sure qemu is gone.
vm_kill() {
  if vm_alive; then kill "$VM_PID" 2>/dev/null || true; sleep 1; kill -9 "$VM_PID" 2>/dev/null || true; fi
  VM_PID=
}
