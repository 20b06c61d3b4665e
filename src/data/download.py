"""Registry of the public datasets (image translation, and the classic GANs' MNIST-format ones
and CIFAR-10), and a command that downloads them.

Usage::

    python -m src.data.download horse2zebra --root data     # -> data/horse2zebra/trainA ...
    python -m src.data.download --list

The registry below is the single source of where each dataset comes from: the DataModules'
"dataset not found" errors quote the same entries, so the two cannot drift apart.
Only the standard library is used (urllib, zipfile, tarfile).
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import http.client
import numbers
import os
import re
import shlex
import shutil
import socket
import ssl
import subprocess
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
import zlib
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from src.data.cifar import convert_cifar10
from src.data.mnist import build_idx_dataset
from src.data.placement import place, remove_stale_scratch, scratch_prefix
from src.utils.ddp_multirun import quote_override_value
from src.utils.whole_files import write_whole

UNPAIRED_LAYOUT = "trainA/ trainB/ testA/ testB/ (unpaired image folders)"
ALIGNED_LAYOUT = "train/ val/ [test/] (each image holds A|B side by side: left half A, right half B)"
PAIRED_FOLDERS_LAYOUT = "trainA/ trainB/ testA/ testB/ (pairs matched by file name)"
CLASS_FOLDERS_LAYOUT = "train/<class>/ test/<class>/ (one image folder per class, the same classes in both)"
# The folders each layout must hold, as alternatives: an aligned dataset's test split may be val/.
REQUIRED_FOLDERS = {
    UNPAIRED_LAYOUT: (("trainA",), ("trainB",), ("testA",), ("testB",)),
    PAIRED_FOLDERS_LAYOUT: (("trainA",), ("trainB",), ("testA",), ("testB",)),
    ALIGNED_LAYOUT: (("train",), ("test", "val")),
    CLASS_FOLDERS_LAYOUT: (("train",), ("test",)),
}
# A server that stops answering ends the download with an error instead of hanging it.
FETCH_TIMEOUT_S = 60
#: a full disk, or the user's quota on it (a cluster's home or project folder; not on Windows)
FULL_DISK_ERRORS = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}

_CYCLEGAN_URL = "http://efrosgans.eecs.berkeley.edu/cyclegan/datasets/{}.zip"
_PIX2PIX_URL = "http://efrosgans.eecs.berkeley.edu/pix2pix/datasets/{}.tar.gz"
_FASHION_MNIST_URL = "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/"
# The releases' published MD5s (the MNIST mirror's are torchvision's, of LeCun's files).
MNIST_MD5 = {"train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
             "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
             "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
             "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c"}
FASHION_MNIST_MD5 = {"train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                     "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
                     "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
                     "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310"}


@dataclass(frozen=True)
class DatasetSource:
    """Where a dataset comes from and what it looks like once extracted."""

    url: str | None  # None: no stable public direct link; `note` says where to get it
    layout: str
    note: str = ""
    # Name of the archive's top-level folder when it differs from the registry key, e.g. the
    # CycleGAN copy of facades unpacks to "facades" but is kept as "facades_unpaired" so that it
    # does not mix with the pix2pix (aligned) copy in the same root.
    archive_folder: str | None = None
    # Builds the dataset folder itself (build(target, fetch), fetch(url, destination, md5)) instead of one archive at `url`
    # being unpacked: MNIST's four IDX files become class folders of PNGs.
    build: Callable[[Path, Callable[[str, Path, str], None]], None] | None = None
    # Turns the unpacked archive's data folder into the dataset folder (convert(data, target)):
    # CIFAR-10's binary batches become class folders of PNGs.
    convert: Callable[[Path, Path], None] | None = None
    # The archive's published MD5: a file the server changed, or a transfer corrupted on the way
    # (Fashion-MNIST is served over plain http by its release page), is refused before it is read.
    md5: str | None = None


# The pix2pix and CycleGAN authors withdrew their Cityscapes copies (its licence): built from the
# official release instead, as their scripts say.
_CITYSCAPES_NOTE = (
    "Cityscapes is not downloaded: register at https://www.cityscapes-dataset.com, download "
    "gtFine_trainvaltest.zip and leftImg8bit_trainvaltest.zip, unpack them, and build the papers' 256x256 pairs "
    "(both the A|B and the trainA/trainB layouts, one folder for data=cityscapes and data=cityscapes_unpaired) "
    "with: python -m src.data.prepare_cityscapes --gtfine gtFine --leftimg8bit leftImg8bit "
    "--output <root>/{output}")


def _cyclegan(name: str, note: str = "") -> DatasetSource:
    return DatasetSource(_CYCLEGAN_URL.format(name), UNPAIRED_LAYOUT, note)


def _cyclegan_copy_of_paired(name: str) -> DatasetSource:
    note = f"Unpaired (CycleGAN) copy of {name}; the aligned pix2pix copy is the entry '{name}'."
    return DatasetSource(_CYCLEGAN_URL.format(name), UNPAIRED_LAYOUT, note, archive_folder=name)


def _pix2pix(name: str, note: str = "") -> DatasetSource:
    return DatasetSource(_PIX2PIX_URL.format(name), ALIGNED_LAYOUT, note)


DATASETS: dict[str, DatasetSource] = {
    # CycleGAN datasets (Zhu et al. 2017), unpaired folders.
    "horse2zebra": _cyclegan("horse2zebra"),
    "summer2winter_yosemite": _cyclegan("summer2winter_yosemite"),
    "monet2photo": _cyclegan("monet2photo"),
    "apple2orange": _cyclegan("apple2orange"),
    "cezanne2photo": _cyclegan("cezanne2photo"),
    "ukiyoe2photo": _cyclegan("ukiyoe2photo"),
    "vangogh2photo": _cyclegan("vangogh2photo"),
    "iphone2dslr_flower": _cyclegan("iphone2dslr_flower"),
    "facades_unpaired": _cyclegan_copy_of_paired("facades"),
    "maps_unpaired": _cyclegan_copy_of_paired("maps"),
    "cityscapes_unpaired": DatasetSource(None, UNPAIRED_LAYOUT, _CITYSCAPES_NOTE.format(output="cityscapes_unpaired")),
    # pix2pix datasets (Isola et al. 2017), aligned A|B images.
    "facades": _pix2pix("facades"),
    "maps": _pix2pix("maps"),
    "edges2shoes": _pix2pix("edges2shoes", "About 2 GB."),
    "edges2handbags": _pix2pix("edges2handbags", "About 8 GB."),
    "night2day": _pix2pix("night2day"),
    "cityscapes": DatasetSource(None, ALIGNED_LAYOUT, _CITYSCAPES_NOTE.format(output="cityscapes")),
    # The classic GANs' grayscale benchmarks (LeCun et al. 1998; Xiao et al. 2017), 28 px, 10
    # classes, written as class folders (class folder names sort in label order).
    "mnist": DatasetSource(
        "https://ossci-datasets.s3.amazonaws.com/mnist/", CLASS_FOLDERS_LAYOUT,
        "The four IDX files of the PyTorch mirror, written as PNG class folders 0-9 (60000 + 10000 images).",
        build=build_idx_dataset("https://ossci-datasets.s3.amazonaws.com/mnist/", [str(d) for d in range(10)],
                                MNIST_MD5)),
    # Zalando's release page serves plain http; its GitHub copy holds the same files over https.
    "fashion_mnist": DatasetSource(
        _FASHION_MNIST_URL, CLASS_FOLDERS_LAYOUT,
        "Zalando's release, written as PNG class folders 0_tshirt ... 9_ankle_boot (60000 + 10000 images).",
        build=build_idx_dataset(_FASHION_MNIST_URL,
                                ["0_tshirt", "1_trouser", "2_pullover", "3_dress", "4_coat", "5_sandal", "6_shirt",
                                 "7_sneaker", "8_bag", "9_ankle_boot"], FASHION_MNIST_MD5)),
    # The GAN papers' colour benchmark (Krizhevsky 2009), 32 px, 10 classes.
    "cifar10": DatasetSource(
        "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz", CLASS_FOLDERS_LAYOUT,
        "The binary release, written as PNG class folders 0_airplane ... 9_truck (50000 + 10000 images).",
        convert=convert_cifar10, md5="c32a1d4ab5d03f1284b67883e8d87530"),
    # DRIT (Lee et al. 2018) cat2dog, used by U-GAT-IT and NICE-GAN.
    "cat2dog": DatasetSource(
        "http://vllab.ucmerced.edu/hylee/DRIT/datasets/cat2dog.zip",
        UNPAIRED_LAYOUT,
        "From DRIT; cats are domain A, dogs domain B.",
    ),
    # U-GAT-IT (Kim et al. 2020) selfie2anime: only a Google Drive folder, no direct URL.
    "selfie2anime": DatasetSource(
        None,
        UNPAIRED_LAYOUT,
        "No stable direct download exists: the U-GAT-IT README (https://github.com/taki0112/UGATIT) "
        "links the selfie2anime archive on Google Drive. Download it by hand and unpack it so that "
        "<root>/selfie2anime/ holds trainA/ (selfies) trainB/ (anime) testA/ testB/.",
    ),
}


class DownloadError(RuntimeError):
    """A download that cannot complete: the URL, what went wrong and what to do."""


def missing_folders(folder: Path, layout: str) -> list[str]:
    """The folders of `layout` that `folder` lacks (for the aligned test split: "test/ or val/")."""
    return [" or ".join(f"{name}/" for name in choices) for choices in REQUIRED_FOLDERS[layout]
            if not any((folder / name).is_dir() for name in choices)]


def nested_dataset(folder: Path, layout: str) -> Path | None:
    """A subfolder of `folder` that holds the whole layout, when `folder` itself does not: an
    archive unpacked by hand one level too deep (data/horse2zebra/horse2zebra/trainA)."""
    if not folder.is_dir() or not missing_folders(folder, layout):
        return None
    for child in sorted(folder.iterdir()):
        if child.is_dir() and not missing_folders(child, layout):
            return child
    return None


#: Windows' shells (cmd.exe, and PowerShell for a native program) pass POSIX single quotes
#: through as part of the argument: arguments are quoted as its C runtime reads them there
WINDOWS = os.name == "nt"


def shell_quoted(argument: str) -> str:
    """`argument` as one word of the user's shell, quoted only where it needs to be."""
    return subprocess.list2cmdline([argument]) if WINDOWS else shlex.quote(argument)


def pasteable_override(key: str, path: str | Path, prefix: str = "++") -> str:
    """`++key=path` (`prefix` for another form: "" for a key the config holds, as `ckpt_path`
    and `hydra.run.dir`) as a user pastes it onto a shell's command line: the path quoted for Hydra
    where its grammar would read it otherwise (spaces, '=', ',', parentheses, non-ASCII letters
    are not plain values), then the whole quoted for the shell where needed. A plain path (one
    with a '/', or a name Hydra reads as a name: `null`, `2024` or `true` alone would be read as
    other types) is shown as it is."""
    value = str(path)
    plain_path = "/" in value and re.fullmatch(r"[A-Za-z0-9_./-]+", value)
    return pasteable(f"{prefix}{key}={value if plain_path else override_value(value)}")


def pasteable_setting(key: str, value, prefix: str = "++") -> str:
    """`++key=value` for a setting's Python value, to paste onto a shell's command line: written
    as Hydra reads it back (None as null, lists in brackets, a string quoted where Hydra would read
    another type or stop at a character: "None", a space), and quoted for the shell."""
    return pasteable(f"{prefix}{key}={override_value(value)}")


def override_value(value) -> str:
    """A Python value as a Hydra override's value that reads back as the same value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, numbers.Integral):   # (numpy's too, whose repr is np.int64(3))
        return str(int(value))
    if isinstance(value, numbers.Real):
        return repr(float(value))
    if isinstance(value, Mapping):   # (OmegaConf's containers too)
        return "{" + ",".join(f"{key}:{override_value(item)}" for key, item in value.items()) + "}"
    if isinstance(value, Sequence) and not isinstance(value, str):
        return "[" + ",".join(override_value(item) for item in value) + "]"
    text = str(value)
    if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_./-]*", text) and text.lower() not in ("null", "true", "false", "inf",
                                                                                  "nan"):
        return text
    return quote_override_value(text)


def pasteable(override: str) -> str:
    """A Hydra override as one word of the user's shell: a list's brackets too, which zsh
    (macOS's shell) reads as a file pattern and refuses when no file matches it."""
    if not WINDOWS and override != shlex.quote(override) and not re.search(r'["$`\\!]', override):
        # double quotes read better around Hydra's single ones than shlex's '"'"', and the
        # shell changes nothing inside them but these characters
        return f'"{override}"'
    return shell_quoted(override)


def how_to_get(name: str, data_dir: str | Path) -> str:
    """Explain how to obtain a dataset so that it ends up in data_dir; used in error messages.
    The paths in its commands are quoted to paste back as they are (`pasteable_override`)."""
    data_dir = Path(data_dir)
    source = DATASETS.get(name)
    for layout in ((source.layout,) if source else REQUIRED_FOLDERS):
        nested = nested_dataset(data_dir, layout)
        if nested is not None:
            return (f"The dataset is one folder down, in {nested}: pass "
                    f"{pasteable_override('data.data_dir', nested)} to train.py or eval.py, or move its folders "
                    f"up into {data_dir}.")
    if source is None:
        known = ", ".join(sorted(DATASETS))
        return (
            f"'{name}' is not a dataset this project knows how to download ({known}). "
            f"Put your images in {data_dir} with the layout {UNPAIRED_LAYOUT}, or for paired data "
            f"{ALIGNED_LAYOUT}, or {PAIRED_FOLDERS_LAYOUT}, or for the noise-to-image models "
            f"{CLASS_FOLDERS_LAYOUT}."
        )
    root = data_dir.parent
    if source.url is None:
        hint = source.note.replace("<root>", shell_quoted(str(root)))
    else:
        hint = f"Download it with: python -m src.data.download {name} --root {shell_quoted(str(root))}"
        if data_dir.name != name:
            hint += f" and pass {pasteable_override('data.data_dir', root / name)}"
        elif data_dir.is_dir() and any(data_dir.iterdir()):
            hint += f" (after moving the incomplete {data_dir} away)"
        if source.note:
            hint += f". {source.note}"
    return f"{hint} Expected layout of {data_dir}: {source.layout}."


def _report_progress(done: int, total: int | None) -> None:
    mib = done / 2**20
    if total:
        print(f"\r  {mib:8.1f} MiB / {total / 2**20:.1f} MiB ({100 * done / total:5.1f}%)", end="")
    else:
        print(f"\r  {mib:8.1f} MiB", end="")
    sys.stdout.flush()


def fetch(url: str, destination: Path, md5: str | None = None, chunk_bytes: int = 1 << 20) -> None:
    """Download url to destination, printing progress; a failed or cut-short transfer, or one
    whose MD5 differs from `md5` (the published checksum, where there is one), raises
    DownloadError (a dropped connection otherwise ends the read early without an error). The
    file is whole and checked, or absent (`write_whole`): a later run that finds it need not
    check it."""
    print(f"Downloading {url}")
    destination = Path(destination)
    with disk_space_errors(destination.parent, f"downloading {url}"):
        write_whole(destination, lambda out: _download(url, out, destination.parent, chunk_bytes, md5))


@contextmanager
def network_errors(url: str):
    """A failed transfer as a DownloadError saying what to do. Only the network's calls run in
    it: a full disk is not told to "run the command again"."""
    try:
        yield
    except (OSError, http.client.HTTPException) as error:  # URLError, HTTPError, timeouts, a cut chunked reply
        raise DownloadError(f"Downloading {url} failed: {error}. {retry_advice(error)}") from error


@contextmanager
def disk_space_errors(folder: Path, doing: str):
    """A disk that fills while `doing` as a DownloadError naming the folder: the traceback of an
    OSError after an hour's download reads like a network failure, or a bug."""
    try:
        yield
    except OSError as error:
        if error.errno not in FULL_DISK_ERRORS:
            raise
        raise DownloadError(f"{folder} ran out of space {doing} ({error.strerror}: a cluster's quota counts too): "
                            "free some space there, or download onto another disk (--root).") from error


def require_free_space(folder: Path, needed: int | None, what: str) -> None:
    """Stop before writing `needed` bytes into `folder` where its disk has not the room: found
    only when the disk fills, the download before it is lost."""
    free = shutil.disk_usage(folder).free
    if needed is not None and needed > free:
        raise DownloadError(f"{what} needs {needed / 2**30:.2f} GiB, and {folder} has {free / 2**30:.2f} GiB free: "
                            "free some space there, or download onto another disk (--root).")


def _download(url: str, out, folder: Path, chunk_bytes: int, md5: str | None) -> None:
    total, done = None, 0
    digest = hashlib.md5(usedforsecurity=False)
    try:
        with network_errors(url):
            response = urllib.request.urlopen(url, timeout=FETCH_TIMEOUT_S)
        with response:
            total = int(response.headers.get("Content-Length") or 0) or None
            require_free_space(folder, total, url)
            while True:
                with network_errors(url):
                    chunk = response.read(chunk_bytes)
                if not chunk:
                    break
                out.write(chunk)
                digest.update(chunk)
                done += len(chunk)
                _report_progress(done, total)
    finally:
        print()
    if total is not None and done != total:
        raise DownloadError(f"Downloading {url} stopped after {done:,} of {total:,} bytes (the connection "
                            f"dropped). Run the command again.")
    if md5 is not None and digest.hexdigest() != md5.lower():
        raise DownloadError(f"{url} arrived with MD5 {digest.hexdigest()}, not the published {md5.lower()}: the "
                            "transfer was corrupted, or the server now serves another file. Run the command again; "
                            "if it fails the same way, the dataset's page may list a new release.")


def retry_advice(error: OSError) -> str:
    """What to do about a failed transfer. A certificate this Python cannot verify fails every
    time: the python.org installer for macOS ships without certificates until its "Install
    Certificates.command" runs; behind a proxy that inspects TLS, its certificate is missing."""
    reason = getattr(error, "reason", None)   # URLError wraps it; the bare error carries a text reason
    if isinstance(error, ssl.SSLCertVerificationError) or isinstance(reason, ssl.SSLCertVerificationError):
        return ("This Python cannot verify the server's certificate, so running again fails the same way: on macOS "
                "with python.org's Python, run 'Install Certificates.command' (in its Applications folder); behind "
                "a TLS-inspecting proxy, point SSL_CERT_FILE at its certificate bundle.")
    # (an http:// URL gets the proxy's answer; an https:// one a failed tunnel that quotes it)
    if (isinstance(error, urllib.error.HTTPError) and error.code == 407) or "Tunnel connection failed: 407" in str(
            reason if reason is not None else error):
        return ("The proxy asks for a login: put it in the proxy's address (http_proxy and https_proxy="
                "http://user:password@host:port) and run the command again.")
    # 408 (timeout) and 429 (too many requests) pass; other 4xx answers stay the same.
    if isinstance(error, urllib.error.HTTPError) and 400 <= error.code < 500 and error.code not in (408, 429):
        return ("The server does not serve this file at this address, so running again fails the same way: "
                "the dataset's page may say where it moved.")
    cause = reason if isinstance(reason, OSError) else error
    if isinstance(cause, socket.gaierror) or getattr(cause, "errno", None) in (errno.ENETUNREACH, errno.EHOSTUNREACH):
        return ("This machine cannot reach the server (offline, or it needs a proxy): set https_proxy and "
                "http_proxy, or download on a machine with internet and copy the files here.")
    return "Run the command again."


def _inside(root: Path, member: str) -> bool:
    return (root / member).resolve().is_relative_to(root.resolve())


def extract(archive: Path, into: Path) -> None:
    """Unpack a .zip or .tar.gz archive, refusing members that would land outside `into` and tar
    members other than files and folders (links; a FIFO named like an image would block its
    reader for good), where the disk has room for it."""
    print(f"Extracting {archive.name}")
    if archive.name.endswith(".zip"):
        with zipfile.ZipFile(archive) as zipped:
            for member in zipped.namelist():
                if not _inside(into, member):
                    raise DownloadError(f"Refusing unsafe path {member!r} in {archive}")
            require_free_space(into, sum(info.file_size for info in zipped.infolist()), f"unpacking {archive.name}")
            zipped.extractall(into)
    else:
        with tarfile.open(archive) as tarred:
            for member in tarred.getmembers():
                if not _inside(into, member.name) or not (member.isfile() or member.isdir()):
                    raise DownloadError(f"Refusing unsafe member {member.name!r} in {archive}")
            require_free_space(into, sum(member.size for member in tarred.getmembers()), f"unpacking {archive.name}")
            if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4: let tarfile vet members too
                tarred.extractall(into, filter="data")
            else:
                tarred.extractall(into)


def _dataset_folder_in(extracted: Path, source: DatasetSource, name: str) -> Path:
    """Find the folder holding the data inside an extracted archive."""
    expected = extracted / (source.archive_folder or name)
    if expected.is_dir():
        return expected
    entries = [entry for entry in extracted.iterdir() if not entry.name.startswith(".")]
    if len(entries) == 1 and entries[0].is_dir():
        return entries[0]
    return extracted  # the archive has no top-level folder


def download(name: str, root: str | Path) -> Path:
    """Download and extract dataset `name` into root/name; returns that folder."""
    source = DATASETS[name]
    target = Path(root) / name
    if source.url is None:
        raise RuntimeError(f"{name} cannot be downloaded automatically. {how_to_get(name, target)}")
    # Resolved: where data/<name> is a link to scratch storage, the data goes to the link's target
    # (a rename onto the link itself fails), built beside it on the same file system.
    destination = target.resolve()
    destination.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_scratch(destination)   # also where the dataset is in place by now
    if target.is_dir() and any(target.iterdir()):
        missing = missing_folders(target, source.layout)
        if not missing:
            print(f"{target} already holds {name}; nothing to do.")
            return target
        raise DownloadError(f"{target} exists but lacks {', '.join(missing)}. "
                            f"{how_to_get(name, target)}")
    # Work in a scratch folder next to the target so the final move is a cheap rename and an
    # interrupted download never leaves a half-filled dataset folder behind.
    with (tempfile.TemporaryDirectory(prefix=scratch_prefix(destination), dir=destination.parent) as scratch,
          disk_space_errors(destination.parent, f"building {name}")):
        scratch = Path(scratch)
        if source.build is not None:
            built = scratch / name
            source.build(built, fetch)
        else:
            archive = scratch / source.url.rsplit("/", 1)[-1]
            fetch(source.url, archive, source.md5)
            extracted = scratch / "extracted"
            extracted.mkdir()
            try:
                extract(archive, extracted)
            except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error) as error:
                raise DownloadError(f"{archive.name} from {source.url} is not a whole archive ({error}). "
                                    f"Run the command again.") from error
            built = _dataset_folder_in(extracted, source, name)
            if source.convert is not None:
                source.convert(built, scratch / name)
                built = scratch / name
        if missing := missing_folders(built, source.layout):   # placed, it would pass for the dataset
            raise DownloadError(f"{source.url or name} unpacked without {', '.join(missing)}, so it is not laid out "
                                f"as {source.layout}: the release may have changed. Nothing was placed in {target}.")
        if not place(built, destination, lambda folder: not missing_folders(folder, source.layout)):
            print(f"{target} was filled by another download of {name} meanwhile; nothing to do.")
            return target
    print(f"Done: {target}")
    return target


def _list_datasets() -> str:
    lines = []
    for name, source in sorted(DATASETS.items()):
        where = source.url or "manual download"
        lines.append(f"  {name:24s} {where}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m src.data.download",
        description="Download an image-translation dataset into ROOT/NAME.",
    )
    parser.add_argument("name", nargs="?", help="dataset name (see --list)")
    parser.add_argument("--root", default="data", help="parent folder (default: data)")
    parser.add_argument("--list", action="store_true", help="list the known datasets and exit")
    args = parser.parse_args(argv)

    if args.list or args.name is None:
        print("Known datasets:\n" + _list_datasets())
        return 0 if args.list else 2
    if args.name not in DATASETS:
        print(f"Unknown dataset {args.name!r}. Known datasets:\n{_list_datasets()}", file=sys.stderr)
        return 2
    source = DATASETS[args.name]
    if source.url is None:
        # Nothing to download: say where the data lives and how to lay it out.
        print(how_to_get(args.name, Path(args.root) / args.name))
        return 1
    try:
        download(args.name, args.root)
    except DownloadError as error:
        print(error, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
