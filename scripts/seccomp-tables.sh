#!/usr/bin/env bash
# Writes the syscall tables that the built-in runtime's seccomp compiler reads
# (executor/src/seccomp/tables/*.tbl: "name number" per line) from the kernel's UAPI headers
# of this machine (Debian's linux-libc-dev). Run it again when a new kernel adds syscalls.
set -euo pipefail
cd "$(dirname "$0")/.."
headers=/usr/include/x86_64-linux-gnu/asm
out=executor/src/seccomp/tables
mkdir -p "$out"
# Calls newer than Debian 12's headers (Linux 6.1). From 424 on, the kernel gives a new call
# one number on every architecture (x32 with its bit); map_shadow_stack is 64-bit only.
newer() { # BASE WITH_64BIT_ONLY
  printf '%s\n' "cachestat 451" "fchmodat2 452" "futex_wake 454" "futex_wait 455" \
    "futex_requeue 456" "statmount 457" "listmount 458" "lsm_get_self_attr 459" \
    "lsm_set_self_attr 460" "lsm_list_modules 461" "mseal 462" "setxattrat 463" \
    "getxattrat 464" "listxattrat 465" "removexattrat 466" "open_tree_attr 467" \
    "file_getattr 468" "file_setattr 469"
  [ "$2" = no ] || echo "map_shadow_stack 453"
}
table() { # HEADER BASE
  sed -n 's/^#define __NR_\([a-z0-9_]*\) (*\(__X32_SYSCALL_BIT + \)\{0,1\}\([0-9]*\))*$/\1 \3/p' "$1" |
    cat - <(newer "$2" "$3") | awk -v base="$2" '!seen[$1]++ { printf "%s %d\n", $1, $2 + base }' |
    sort -k2,2n
}
{ echo "# x86_64 (AUDIT_ARCH_X86_64), from $headers/unistd_64.h and newer() in scripts/seccomp-tables.sh"; table "$headers/unistd_64.h" 0 yes; } > "$out/x86_64.tbl"
{ echo "# i386 (AUDIT_ARCH_I386), from $headers/unistd_32.h and newer() in scripts/seccomp-tables.sh"; table "$headers/unistd_32.h" 0 no; } > "$out/x86.tbl"
# x32 numbers carry __X32_SYSCALL_BIT (0x40000000) in the table, as the kernel sees them.
{ echo "# x32 (AUDIT_ARCH_X86_64 with __X32_SYSCALL_BIT), from $headers/unistd_x32.h and newer() in scripts/seccomp-tables.sh"; table "$headers/unistd_x32.h" 1073741824 yes; } > "$out/x32.tbl"
wc -l "$out"/*.tbl
