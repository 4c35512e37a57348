"""Build the guest image from the recipe in `images/`, cached by a hash of everything it is made of.

An image is three files plus a manifest:
- `vmlinux`: the Debian kernel, decompressed from its bzImage. It boots as a PVH ELF through
  QEMU's direct kernel boot, which skips ~4 s of xz decompression under TCG;
- `initrd.img`: static busybox, a handful of modules, and `/init` (NIC naming, root mount);
- `rootfs.ext4`: the root filesystem made by mmdebstrap; guests boot from qcow2 overlays of it.

The apt sources are the host's configured Debian sources for the recipe's suite (so a local mirror
configured on the host is used as it is), or `STACKBED_APT_SOURCES` (a sources file) or
`STACKBED_MIRROR` (a mirror URI) when set: the mirror is configuration, never written here.
"""

from __future__ import annotations

import hashlib
import json
import lzma
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field

from host.paths import PROJECT_ROOT, image_cache_dir

IMAGES_DIR = PROJECT_ROOT / "images"
# Bump when the layout of a built image changes in a way the inputs' hash cannot see.
IMAGE_FORMAT = 1


class ImageError(RuntimeError):
    pass


class Recipe(BaseModel):
    """The recipe file `images/<name>.yaml` (see images/default.yaml for what each field means)."""

    model_config = ConfigDict(extra="forbid")
    suite: str
    packages: list[str]
    modules: list[str]
    initramfs_modules: list[str]
    exclude: list[str] = Field(default_factory=list)
    headroom_mib: int = Field(default=256, ge=64, le=16384)


@dataclass(frozen=True)
class Image:
    """A built image in the cache."""

    name: str
    digest: str
    path: Path

    @property
    def kernel(self) -> Path:
        return self.path / "vmlinux"

    @property
    def initrd(self) -> Path:
        return self.path / "initrd.img"

    @property
    def rootfs(self) -> Path:
        return self.path / "rootfs.ext4"

    @property
    def manifest(self) -> dict:
        return json.loads((self.path / "manifest.json").read_text())


def load_recipe(name: str) -> Recipe:
    path = IMAGES_DIR / f"{name}.yaml"
    if not path.exists():
        known = sorted(p.stem for p in IMAGES_DIR.glob("*.yaml"))
        raise ImageError(f"no image recipe {path} (known: {', '.join(known) or 'none'})")
    return Recipe.model_validate(yaml.safe_load(path.read_text()))


# --- apt sources ------------------------------------------------------------------------------


def _deb822_stanzas(text: str) -> list[dict[str, str]]:
    stanzas, cur, key = [], {}, None
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        if not line.strip():
            if cur:
                stanzas.append(cur)
            cur, key = {}, None
        elif line[0].isspace() and key:
            cur[key] += "\n" + line.strip()
        elif ":" in line:
            key, _, value = line.partition(":")
            key = key.strip()
            cur[key] = value.strip()
    if cur:
        stanzas.append(cur)
    return stanzas


def host_apt_sources(suite: str) -> str:
    """The host's Debian sources for `suite` (and its -updates/-security), as deb822 text.

    Entries for other suites and third-party repositories are left out: the guest image is Debian
    only, and a repository the build cannot reach would fail it.
    """
    wanted = {suite, f"{suite}-updates", f"{suite}-security"}
    out: list[str] = []
    files = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for f in files:
        if not f.is_file():
            continue
        text = f.read_text(errors="replace")
        if f.suffix == ".sources":
            for st in _deb822_stanzas(text):
                if "deb" not in st.get("Types", "").split():
                    continue
                suites = [s for s in st.get("Suites", "").split() if s in wanted]
                if suites and "main" in st.get("Components", "").split():
                    stanza = [
                        "Types: deb",
                        f"URIs: {st['URIs']}",
                        f"Suites: {' '.join(suites)}",
                        "Components: main",
                    ]
                    if "Signed-By" in st:
                        stanza.append(f"Signed-By: {st['Signed-By']}")
                    out.append("\n".join(stanza))
        elif f.suffix == ".list" or f.name == "sources.list":
            for line in text.splitlines():
                m = re.match(r"^deb\s+(\[[^\]]*\]\s+)?(\S+)\s+(\S+)\s+(.*)$", line.strip())
                if m and m.group(3) in wanted and "main" in m.group(4).split():
                    opts = m.group(1) or ""
                    out.append(f"deb {opts}{m.group(2)} {m.group(3)} main")
    if not out:
        raise ImageError(
            f"no Debian '{suite}' apt source is configured on this host (looked in "
            f"/etc/apt/sources.list and /etc/apt/sources.list.d/); configure one, or set "
            f"STACKBED_MIRROR to a mirror URI or STACKBED_APT_SOURCES to a sources file"
        )
    # One-line entries and deb822 stanzas cannot share a file; convert one-liners to deb822.
    stanzas = []
    for entry in out:
        if entry.startswith("deb "):
            m = re.match(r"^deb\s+(\[([^\]]*)\]\s+)?(\S+)\s+(\S+)\s+main$", entry)
            assert m
            stanza = [
                "Types: deb",
                f"URIs: {m.group(3)}",
                f"Suites: {m.group(4)}",
                "Components: main",
            ]
            for opt in (m.group(2) or "").split():
                k, _, v = opt.partition("=")
                if k == "signed-by":
                    stanza.append(f"Signed-By: {v}")
            stanzas.append("\n".join(stanza))
        else:
            stanzas.append(entry)
    return "\n\n".join(stanzas) + "\n"


def apt_sources(suite: str) -> tuple[str, str]:
    """(kind, value): what mmdebstrap is given as its MIRROR argument, and where it came from."""
    if src := os.environ.get("STACKBED_APT_SOURCES"):
        return "file", Path(src).read_text()
    if mirror := os.environ.get("STACKBED_MIRROR"):
        return "mirror", mirror
    return "file", host_apt_sources(suite)


# --- hashing and cache ------------------------------------------------------------------------


def recipe_digest(name: str) -> str:
    """Hash of every input of the image: recipe, its files, the apt sources, and IMAGE_FORMAT.

    The builder's own source is not hashed (an edit to a docstring should not cost a rebuild):
    bump IMAGE_FORMAT when a builder change alters what it produces.
    """
    h = hashlib.sha256()
    h.update(f"format={IMAGE_FORMAT}\n".encode())
    inputs = [IMAGES_DIR / f"{name}.yaml"]
    inputs += sorted(p for p in (IMAGES_DIR / name).rglob("*") if p.is_file())
    for p in inputs:
        h.update(str(p.relative_to(PROJECT_ROOT)).encode() + b"\0")
        h.update(p.read_bytes() + b"\0")
        h.update(oct(p.stat().st_mode & 0o111).encode())
    kind, value = apt_sources(load_recipe(name).suite)
    h.update(f"{kind}\0{value}".encode())
    return h.hexdigest()[:16]


def cached_image(name: str) -> Image | None:
    digest = recipe_digest(name)
    path = image_cache_dir() / f"{name}-{digest}"
    if (path / "manifest.json").exists():
        return Image(name, digest, path)
    return None


# --- build steps ------------------------------------------------------------------------------


def _run(cmd: list[str], log: Path, **kw) -> subprocess.CompletedProcess:
    with log.open("ab") as f:
        f.write(("\n$ " + " ".join(cmd) + "\n").encode())
        f.flush()
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, **kw)
    if proc.returncode != 0:
        tail = log.read_text(errors="replace").splitlines()[-25:]
        raise ImageError(
            f"`{' '.join(cmd[:3])} ...` failed (exit {proc.returncode}); "
            f"last lines of {log}:\n" + "\n".join(tail)
        )
    return proc


def _module_closure(root: Path, kver: str, names: list[str]) -> list[str]:
    """Module paths (relative to /lib/modules/KVER) for `names` and their dependencies, in load
    order (dependencies first), from the kernel package's modules.dep."""
    moddir = root / "lib/modules" / kver
    deps: dict[str, list[str]] = {}
    by_name: dict[str, str] = {}
    for line in (moddir / "modules.dep").read_text().splitlines():
        path, _, rest = line.partition(":")
        deps[path] = rest.split()
        by_name[Path(path).name.removesuffix(".ko").replace("-", "_")] = path
    order: list[str] = []

    def visit(path: str) -> None:
        if path in order:
            return
        # modules.dep lists the full transitive closure, deepest last: load in reverse order.
        for dep in reversed(deps[path]):
            visit(dep)
        order.append(path)

    for name in names:
        key = name.replace("-", "_")
        if key not in by_name:
            builtin = (moddir / "modules.builtin").read_text()
            if re.search(rf"/{re.escape(key)}\.ko$", builtin.replace("-", "_"), re.M):
                continue  # built into the kernel: nothing to load
            raise ImageError(f"kernel {kver} has no module '{name}' (recipe field modules)")
        visit(by_name[key])
    return order


def _prune_modules(root: Path, kver: str, keep: list[str], log: Path) -> None:
    moddir = root / "lib/modules" / kver
    keep_set = set(keep)
    for ko in (moddir / "kernel").rglob("*.ko*"):
        if str(ko.relative_to(moddir)) not in keep_set:
            ko.unlink()
    _run(["chroot", str(root), "depmod", kver], log)


def _extract_vmlinux(bzimage: Path, dest: Path) -> str:
    """Decompress the kernel inside a bzImage; QEMU boots the ELF directly through PVH."""
    data = bzimage.read_bytes()
    for magic, kind in ((b"\xfd7zXZ\x00", "xz"),):
        start = data.find(magic)
        while start != -1:
            try:
                out = lzma.LZMADecompressor().decompress(data[start:])
            except lzma.LZMAError:
                start = data.find(magic, start + 1)
                continue
            if out[:4] == b"\x7fELF":
                dest.write_bytes(out)
                return f"vmlinux (ELF, decompressed from {kind})"
            start = data.find(magic, start + 1)
    shutil.copyfile(bzimage, dest)
    return "bzImage (no decompressible ELF found)"


def _write_initramfs(
    root: Path, kver: str, modules: list[str], init: Path, dest: Path, log: Path
) -> None:
    with tempfile.TemporaryDirectory(prefix="stackbed-initrd-") as tmp:
        t = Path(tmp)
        for d in ("bin", "proc", "sys", "dev", "newroot", "lib/modules"):
            (t / d).mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / "usr/bin/busybox", t / "bin/busybox")
        shutil.copy2(init, t / "init")
        order = []
        for rel in modules:
            target = t / "lib/modules" / Path(rel).name
            shutil.copy2(root / "lib/modules" / kver / rel, target)
            order.append(Path(rel).name)
        (t / "modules.order").write_text("\n".join(order) + "\n")
        files = sorted(str(p.relative_to(t)) for p in t.rglob("*"))
        with dest.open("wb") as out:
            proc = subprocess.run(
                ["cpio", "--quiet", "-o", "-H", "newc", "-R", "0:0"],
                cwd=t,
                input="\n".join(files).encode(),
                stdout=out,
                stderr=subprocess.PIPE,
            )
        if proc.returncode:
            raise ImageError(f"cpio failed: {proc.stderr.decode(errors='replace')}")
    with log.open("a") as f:
        f.write(f"initramfs: {len(modules)} modules, {dest.stat().st_size} bytes\n")


def _copy_overlay(src: Path, root: Path) -> None:
    """Copy the recipe's files into the root, through merged-/usr symlinks such as /sbin."""
    for p in sorted(src.rglob("*")):
        if p.is_dir():
            continue
        rel = p.relative_to(src)
        dest = root / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(p, dest)


def _dir_size_mib(root: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            fp = os.path.join(dirpath, f)
            if not os.path.islink(fp):
                total += os.lstat(fp).st_blocks * 512
    return total // (1024 * 1024) + 1


def build_image(
    name: str = "default", force: bool = False, progress: Callable[[str], None] = print
) -> Image:
    """Build (or find in the cache) the image for recipe `name`."""
    if not force and (img := cached_image(name)):
        progress(f"image {name} is cached: {img.path}")
        return img
    for tool in ("mmdebstrap", "mke2fs", "cpio", "chroot"):
        if not shutil.which(tool):
            raise ImageError(f"{tool} is not installed: run `./quickstart.sh setup`")
    recipe = load_recipe(name)
    digest = recipe_digest(name)
    cache = image_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    final = cache / f"{name}-{digest}"
    work = Path(tempfile.mkdtemp(prefix=f".build-{name}-", dir=cache))
    log = cache / f"{name}.build.log"  # outside the work dir: kept when a build fails
    log.write_text("")
    t0 = time.monotonic()
    try:
        root = work / "root"
        kind, value = apt_sources(recipe.suite)
        mirror_arg = value
        if kind == "file":
            (work / "sources").write_text(value)
            mirror_arg = str(work / "sources")
        cmd = [
            "mmdebstrap",
            "--variant=apt",
            "--mode=root",
            "--format=directory",
            f"--include={','.join(recipe.packages)}",
            # The kernel is booted directly: no initrd generation inside the image.
            "--dpkgopt=path-exclude=/etc/kernel/postinst.d/initramfs-tools",
        ]
        cmd += [f"--dpkgopt=path-exclude={pat}" for pat in recipe.exclude]
        cmd += [recipe.suite, str(root), mirror_arg]
        progress(f"mmdebstrap {recipe.suite} with {len(recipe.packages)} packages (log: {log})")
        _run(cmd, log)
        kvers = sorted(p.name for p in (root / "lib/modules").iterdir())
        if len(kvers) != 1:
            raise ImageError(f"expected one kernel in the image, found {kvers}")
        kver = kvers[0]
        progress(f"kernel {kver}: pruning modules, extracting vmlinux, writing initramfs")
        keep = _module_closure(root, kver, recipe.modules)
        _prune_modules(root, kver, keep, log)
        kernel_kind = _extract_vmlinux(root / "boot" / f"vmlinuz-{kver}", work / "vmlinux")
        initrd_mods = _module_closure(root, kver, recipe.initramfs_modules)
        _write_initramfs(
            root, kver, initrd_mods, IMAGES_DIR / name / "init", work / "initrd.img", log
        )
        _copy_overlay(IMAGES_DIR / name / "rootfs", root)
        for f in (root / "boot").glob("vmlinuz-*"):
            f.unlink()  # booted from outside the image; no need to carry it twice
        pkgs = subprocess.run(
            ["chroot", str(root), "dpkg-query", "-W", "-f=${Package}\t${Version}\n"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        py = subprocess.run(
            [
                "chroot",
                str(root),
                "python3",
                "-c",
                "import platform; print(platform.python_version())",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        size = _dir_size_mib(root) + recipe.headroom_mib
        progress(f"root filesystem: {size} MiB ext4")
        _run(
            [
                "mke2fs",
                "-q",
                "-t",
                "ext4",
                "-O",
                "^has_journal",
                "-L",
                "stackbed-root",
                "-d",
                str(root),
                "-E",
                "root_owner=0:0",
                str(work / "rootfs.ext4"),
                f"{size}M",
            ],
            log,
        )
        shutil.rmtree(root)
        manifest = {
            "name": name,
            "digest": digest,
            "format": IMAGE_FORMAT,
            "suite": recipe.suite,
            "kernel_version": kver,
            "kernel_boot_file": kernel_kind,
            "python_version": py,
            "apt_sources": {"kind": kind, "value": value},
            "packages": dict(line.split("\t", 1) for line in pkgs.splitlines() if line),
            "initramfs_modules": [Path(m).name for m in initrd_mods],
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "build_seconds": round(time.monotonic() - t0, 1),
        }
        (work / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        if final.exists():
            shutil.rmtree(final)
        work.rename(final)
        progress(f"image {name}-{digest} built in {manifest['build_seconds']} s: {final}")
        return Image(name, digest, final)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise


def prune_cache(keep: Image) -> list[Path]:
    """Remove cached builds of the same recipe other than `keep` (old digests)."""
    removed = []
    for p in image_cache_dir().glob(f"{keep.name}-*"):
        if p != keep.path and p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed
