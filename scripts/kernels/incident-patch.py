#!/usr/bin/env python3
"""incident-patch.py SRC VARIANT - edit a Debian 6.1 KVM source tree (SRC/arch/x86/kvm and
SRC/virt/kvm, unpacked from linux-source-6.1) for the incident kernels of the kernel matrix.

  both variants  module parameter kvm.initial_invalidate_seq (ulong, 0644): kvm_create_vm() starts
                 every new VM's mmu_invalidate_seq there, so a test reaches 0x80000000 with a few
                 invalidations instead of 2^31. Read once per VM; writable at run time.
  bug            is_page_fault_stale() takes the fault's sequence as `int mmu_seq` again, its
                 v5.16..v6.2 signature (a955cad84cda; fixed in 6.1.50 by 82d811ff5665). The int
                 is sign-extended when compared with the unsigned long kvm->mmu_invalidate_seq, so
                 from 0x80000000 on every fault looks stale and is retried forever.
  fixed          nothing else: Debian's code (the sequence stays unsigned long).

Every edit names the exact text it expects and must find it exactly once; afterwards the result
is checked (the signature, the number of call sites, no call left in the other shape). Anything
unexpected (another Debian version moved the code) stops with a message, never a half edit.
"""
import re
import sys
from pathlib import Path


class EditError(Exception):
    pass


def replace_once(text, old, new, what):
    n = text.count(old)
    if n != 1:
        raise EditError(f'{what}: expected the text once, found it {n} times:\n    {old!r}')
    return text.replace(old, new)


def add_initial_seq(virt):
    """kvm.initial_invalidate_seq: declared next to the other kvm module parameters, applied in
    kvm_create_vm() right after the VM's fields are initialised (the struct is zeroed before)."""
    path = virt / 'kvm_main.c'
    s = path.read_text()
    s = replace_once(s, 'module_param(halt_poll_ns, uint, 0644);\n',
                     'module_param(halt_poll_ns, uint, 0644);\n'
                     '\n'
                     '/* kvmfault incident kernels: the mmu_invalidate_seq every new VM starts from */\n'
                     'static unsigned long initial_invalidate_seq;\n'
                     'module_param(initial_invalidate_seq, ulong, 0644);\n',
                     'kvm_main.c: the halt_poll_ns module parameter (the place for ours)')
    s = replace_once(s, '\tkvm->max_vcpus = KVM_MAX_VCPUS;\n',
                     '\tkvm->max_vcpus = KVM_MAX_VCPUS;\n'
                     '\tkvm->mmu_invalidate_seq = READ_ONCE(initial_invalidate_seq);\n',
                     'kvm_main.c: kvm_create_vm() setting max_vcpus')
    path.write_text(s)


STALE_DEF_2 = 'static bool is_page_fault_stale(struct kvm_vcpu *vcpu,\n\t\t\t\tstruct kvm_page_fault *fault)\n'
STALE_DEF_3 = 'static bool is_page_fault_stale(struct kvm_vcpu *vcpu,\n\t\t\t\tstruct kvm_page_fault *fault, int mmu_seq)\n'
CALL_2 = re.compile(r'is_page_fault_stale\(vcpu, fault\)')
CALL_3 = 'is_page_fault_stale(vcpu, fault, fault->mmu_seq)'


def restore_int_seq(kvm):
    """is_page_fault_stale(vcpu, fault, int mmu_seq): the definition, its use of the sequence,
    and every caller (direct_page_fault and kvm_tdp_mmu_page_fault in mmu.c, FNAME(page_fault)
    in paging_tmpl.h) passing fault->mmu_seq, which the int parameter truncates."""
    mmu = kvm / 'mmu' / 'mmu.c'
    tmpl = kvm / 'mmu' / 'paging_tmpl.h'
    s = mmu.read_text()
    s = replace_once(s, STALE_DEF_2, STALE_DEF_3, 'mmu.c: the definition of is_page_fault_stale(vcpu, fault)')
    s = replace_once(s, 'mmu_invalidate_retry_hva(vcpu->kvm, fault->mmu_seq, fault->hva)',
                     'mmu_invalidate_retry_hva(vcpu->kvm, mmu_seq, fault->hva)',
                     'mmu.c: is_page_fault_stale() comparing fault->mmu_seq')
    callers = len(CALL_2.findall(s))
    if callers != 2:
        raise EditError(f'mmu.c: expected 2 calls of is_page_fault_stale(vcpu, fault), found {callers}')
    s = CALL_2.sub(CALL_3, s)
    mmu.write_text(s)
    t = tmpl.read_text()
    callers = len(CALL_2.findall(t))
    if callers != 1:
        raise EditError(f'paging_tmpl.h: expected 1 call of is_page_fault_stale(vcpu, fault), found {callers}')
    tmpl.write_text(CALL_2.sub(CALL_3, t))


def check(src, variant):
    """What the build will contain, read back from the edited files."""
    kvm, virt = src / 'arch' / 'x86' / 'kvm', src / 'virt' / 'kvm'
    main = (virt / 'kvm_main.c').read_text()
    assert 'module_param(initial_invalidate_seq, ulong, 0644);' in main
    assert 'kvm->mmu_invalidate_seq = READ_ONCE(initial_invalidate_seq);' in main
    both = (kvm / 'mmu' / 'mmu.c').read_text() + (kvm / 'mmu' / 'paging_tmpl.h').read_text()
    two, three = len(CALL_2.findall(both)), both.count(CALL_3)
    if variant == 'bug':
        assert STALE_DEF_3 in both and STALE_DEF_2 not in both, 'bug: the definition is not (vcpu, fault, int mmu_seq)'
        assert (two, three) == (0, 3), f'bug: calls with 2 args {two}, with fault->mmu_seq {three} (want 0, 3)'
    else:
        assert STALE_DEF_2 in both and STALE_DEF_3 not in both, 'fixed: the definition is not (vcpu, fault)'
        assert (two, three) == (3, 0), f'fixed: calls with 2 args {two}, with 3 args {three} (want 3, 0)'


def main(argv):
    if len(argv) != 3 or argv[2] not in ('bug', 'fixed'):
        print(__doc__.split('\n')[0], file=sys.stderr)
        return 2
    src, variant = Path(argv[1]), argv[2]
    kvm, virt = src / 'arch' / 'x86' / 'kvm', src / 'virt' / 'kvm'
    if not (kvm / 'mmu' / 'mmu.c').is_file() or not (virt / 'kvm_main.c').is_file():
        print(f'incident-patch: {src} has no arch/x86/kvm/mmu/mmu.c or virt/kvm/kvm_main.c', file=sys.stderr)
        return 2
    if 'initial_invalidate_seq' in (virt / 'kvm_main.c').read_text():
        print(f'incident-patch: {src} is already edited (start from the pristine source)', file=sys.stderr)
        return 2
    try:
        add_initial_seq(virt)
        if variant == 'bug':
            restore_int_seq(kvm)
        check(src, variant)
    except (EditError, AssertionError) as e:
        print(f'incident-patch: {variant}: {e}', file=sys.stderr)
        return 1
    print(f'incident-patch: {variant}: kvm.initial_invalidate_seq added' +
          ('; is_page_fault_stale(vcpu, fault, int mmu_seq) restored, 3 callers' if variant == 'bug' else ''),
          file=sys.stderr)
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv))
