"""The allocator setting train.run applies."""

import platform

from distill_cli.training.allocator import keep_freed_memory


def test_glibc_takes_the_thresholds_and_other_libcs_are_left_alone():
    is_glibc = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
    assert keep_freed_memory() is is_glibc
