#!/usr/bin/env python3
# kvm-keeper.py - holds one empty KVM VM open for the whole guest run (matrix.sh starts it).
# Why: KVM enables the preempt-notifier static key when the first VM is created and disables it
# when the last one is destroyed, and each flip live-patches a jump in __schedule() with int3.
# Under QEMU TCG with two vCPUs that patching sometimes leaves a stale int3 behind: the guest
# kernel dies ("Oops: int3" in __schedule, seen twice in the host suite, which creates and
# destroys hundreds of VMs). One VM held for the whole run keeps the key on: no patching.
import fcntl
import os
import sys
import time

KVM_CREATE_VM = 0xAE01
try:
    kvm = os.open('/dev/kvm', os.O_RDWR | os.O_CLOEXEC)
    vm = fcntl.ioctl(kvm, KVM_CREATE_VM, 0)
except OSError as e:
    print(f'kvm-keeper: cannot hold a VM ({e}); the tests run without it', file=sys.stderr)
    sys.exit(0)
print(f'kvm-keeper: holding VM fd {vm} (pid {os.getpid()})', file=sys.stderr, flush=True)
while True:
    time.sleep(3600)
