"""Portability: the C kernels (CPosix) compile for aarch64 with no x86 code and give the right answers
there, run under qemu. The Swift targets are not built for aarch64 here (no Swift SDK for it on this
machine): README, "Portability"."""
import glob
import os
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def clang():
    swift = shutil.which("swift")
    assert swift, "swift is not on PATH"
    c = Path(os.path.realpath(swift)).parent / "clang"
    assert c.exists(), c
    return str(c)


def test_c_kernels_build_and_run_on_aarch64(tmp_path):
    gcc = sorted(glob.glob("/usr/lib/gcc-cross/aarch64-linux-gnu/*/crtbeginT.o"))
    assert gcc, "the aarch64 cross libraries are missing (make deps installs libgcc-12-dev-arm64-cross)"
    gccdir = os.path.dirname(gcc[-1])
    exe = tmp_path / "kernels"
    build = subprocess.run([clang(), "--target=aarch64-linux-gnu", "--sysroot=/usr/aarch64-linux-gnu", "-isystem", "/usr/aarch64-linux-gnu/include",
                            "-fuse-ld=lld", "-static", "-O2", "-Werror", "-Wno-unused-command-line-argument",
                            "-I", str(ROOT / "Sources/CPosix/include"),
                            str(ROOT / "Tests/cli/portability_main.c"), str(ROOT / "Sources/CPosix/sha256.c"), str(ROOT / "Sources/CPosix/cposix.c"), str(ROOT / "Sources/CPosix/routes.c"),
                            "-L/usr/aarch64-linux-gnu/lib", "-B/usr/aarch64-linux-gnu/lib", f"-B{gccdir}", f"-L{gccdir}", "-o", str(exe)],
                           capture_output=True, text=True, timeout=120)
    assert build.returncode == 0, build.stderr
    head = exe.read_bytes()[:20]
    assert head[:4] == b"\x7fELF" and int.from_bytes(head[18:20], "little") == 183, "an ELF for EM_AARCH64"
    run = subprocess.run(["qemu-aarch64-static", str(exe)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and run.stdout.strip() == "aarch64 kernels: ok", run.stdout + run.stderr

