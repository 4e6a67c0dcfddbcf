#!/usr/bin/env python3
"""Start a program in an unpacked image's root file system the way the
chart's pod spec does, without a container engine (the tests' stand-in for
the runtime): chroot into ROOT (already bind-mounted read-only with the
pod's volumes), keep only the capabilities named (the bounding set, so
root gets nothing else after exec), set no_new_privs
(allowPrivilegeEscalation: false), then exec.

usage: pod-launch.py ROOT CAP[,CAP...] PROGRAM [ARG...]
"""
import ctypes
import os
import sys

PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
CAPS = {"NET_BIND_SERVICE": 10, "NET_ADMIN": 12, "NET_RAW": 13, "SYS_ADMIN": 21}
LAST_CAP = 40  # CAP_CHECKPOINT_RESTORE; higher numbers fail harmlessly below

root, keep, argv = sys.argv[1], sys.argv[2], sys.argv[3:]
keep = {CAPS[c] for c in keep.split(",") if c}
libc = ctypes.CDLL(None, use_errno=True)
os.chroot(root)
os.chdir("/")
for cap in range(LAST_CAP + 1):
    if cap not in keep and libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 and ctypes.get_errno() != 22:
        sys.exit(f"pod-launch: cannot drop capability {cap}: errno {ctypes.get_errno()}")
if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
    sys.exit("pod-launch: cannot set no_new_privs")
os.execve(argv[0], argv, {"PATH": "/usr/sbin:/usr/bin", "WASMSEC_LOG": "info",
                          "WASMSEC_COMPONENTS": "/usr/lib/wasmsec/components"})
