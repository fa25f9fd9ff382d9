"""Hostile local inputs: /dev/zero, a FIFO or a folder wherever idm reads a file.

Before, /dev/zero as a certificate grew memory past 3 GB in 4 s and a FIFO hung forever.
Every file-reading option must now answer at once with one line, exit status 2, and read
nothing (each run is under a timeout, so a hang fails the test instead of stalling it).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from idm.identity.tokens.errors import PinUnavailable
from idm.identity.tokens.pin import read_pin_source
from idm.validator.inputfile import CERTIFICATE_MAX_BYTES, InputFileError, read_input_file
from tests.validator.pki import der, make_pki, pem

IDM = str(Path(sys.executable).with_name("idm"))
TIMEOUT = 30  # seconds; a read of /dev/zero or a blocked FIFO would take forever
ABSENT_TOKEN = "pkcs11:token=absent;manufacturer=M;model=X;serial=0001"


def idm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([IDM, *args], capture_output=True, text=True, timeout=TIMEOUT,
                          stdin=subprocess.DEVNULL)


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    root, inter, leaf = make_pki()
    out = {
        "ca": tmp_path / "ca.pem",
        "chain": tmp_path / "chain.pem",
        "cert": tmp_path / "leaf.pem",
        "crl": tmp_path / "root.crl",
        "fifo": tmp_path / "fifo",
        "folder": tmp_path / "folder",
        "zero": Path("/dev/zero"),
    }
    out["ca"].write_bytes(pem(root.cert))
    out["chain"].write_bytes(pem(inter.cert))
    out["cert"].write_bytes(pem(leaf.cert))
    out["crl"].write_bytes(root.crl())
    os.mkfifo(out["fifo"])
    out["folder"].mkdir()
    return out


def _config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


# (name, arguments with {bad}, whether a folder is a valid value of the option)
OPTIONS = [
    ("verify TARGET", ["verify", "--ca", "{ca}", "{bad}"], False),
    ("verify --ca", ["verify", "--ca", "{bad}", "{cert}"], True),
    ("verify --untrusted", ["verify", "--ca", "{ca}", "--untrusted", "{bad}", "{cert}"], True),
    ("verify --crl", ["verify", "--ca", "{ca}", "--crl", "{bad}", "{cert}"], True),
    ("enroll --cert", ["enroll", "--token", ABSENT_TOKEN, "--cert", "{bad}"], False),
    ("enroll --import-cert", ["enroll", "--token", ABSENT_TOKEN, "--import-cert", "{bad}"],
     False),
    ("enroll --ca", ["enroll", "--token", ABSENT_TOKEN, "--cert", "{cert}", "--ca", "{bad}"],
     True),
    ("enroll --untrusted", ["enroll", "--token", ABSENT_TOKEN, "--cert", "{cert}", "--ca",
                            "{ca}", "--untrusted", "{bad}"], True),
    ("enroll --crl", ["enroll", "--token", ABSENT_TOKEN, "--cert", "{cert}", "--ca", "{ca}",
                      "--crl", "{bad}"], True),
    ("--config", ["--config", "{bad}", "list"], False),
    ("import FILE", ["import", "{bad}"], False),
]


CASES = [
    pytest.param(args, kind, id=f"{name}-{kind}")
    for name, args, folder_ok in OPTIONS
    for kind in ("zero", "fifo", *(() if folder_ok else ("folder",)))
]


@pytest.mark.parametrize(("args", "kind"), CASES)
def test_every_file_option_refuses_special_files_at_once(
    files: dict[str, Path], args: list[str], kind: str
) -> None:
    bad = files[kind]
    values = {k: str(v) for k, v in files.items()}
    proc = idm(*(a.format(bad=bad, **values) for a in args))
    assert proc.returncode == 2, proc.stderr
    [line] = proc.stderr.splitlines()
    assert line.startswith("idm: error: ") and str(bad) in line, line
    assert "not a regular file" in line, line


@pytest.mark.parametrize("key", ["[validation]\nca", "[validation]\nuntrusted",
                                 "[revocation]\ncrl"])
@pytest.mark.parametrize("kind", ["zero", "fifo"])
def test_configured_paths_refuse_special_files(
    tmp_path: Path, files: dict[str, Path], key: str, kind: str
) -> None:
    section, name = key.split("\n")
    lines = {"[validation]": [f'ca = ["{files["ca"]}"]'], "[revocation]": []}
    lines.setdefault(section, [])
    lines[section] = [x for x in lines[section] if not x.startswith(f"{name} =")]
    lines[section].append(f'{name} = ["{files[kind]}"]')
    text = "".join(f"{s}\n" + "".join(f"{x}\n" for x in body) for s, body in lines.items())
    cfg = _config(tmp_path, text)
    proc = idm("--config", str(cfg), "verify", str(files["cert"]))
    assert proc.returncode == 2, proc.stderr
    [line] = proc.stderr.splitlines()
    assert str(files[kind]) in line and "not a regular file" in line, line


def test_import_from_stdin_is_capped(tmp_path: Path) -> None:
    """`idm import -` reads standard input (a pipe is fine there) up to the same cap."""
    with open("/dev/zero", "rb") as zero:
        proc = subprocess.run([IDM, "--db", f"sqlite:///{tmp_path / 'i.sqlite'}", "import", "-"],
                              stdin=zero, capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 2
    assert "standard input: larger than the limit of 67,108,864 bytes" in proc.stderr


def test_size_caps(tmp_path: Path, files: dict[str, Path]) -> None:
    big = tmp_path / "big.pem"
    big.write_bytes(files["cert"].read_bytes() + b"#" * CERTIFICATE_MAX_BYTES)
    proc = idm("verify", "--ca", str(files["ca"]), str(big))
    assert proc.returncode == 2
    assert f"{big}: larger than the limit of {CERTIFICATE_MAX_BYTES:,} bytes" in proc.stderr
    # A CRL file shares [revocation] crl_max_bytes with CRL downloads.
    cfg = _config(tmp_path, f'[validation]\nca = ["{files["ca"]}"]\n'
                            "[revocation]\ncrl_max_bytes = 1024\n")
    crl = tmp_path / "big.crl"
    crl.write_bytes(files["crl"].read_bytes() + b"\0" * 2048)
    proc = idm("--config", str(cfg), "verify", "--crl", str(crl), str(files["cert"]))
    assert proc.returncode == 2 and "larger than the limit of 1,024 bytes" in proc.stderr


def test_reader_checks_what_it_opened(tmp_path: Path) -> None:
    """The library call: regular files only, the cap counted on what is read."""
    f = tmp_path / "f"
    f.write_bytes(b"x" * 10)
    assert read_input_file(f, "input", 10) == b"x" * 10
    with pytest.raises(InputFileError, match="larger than the limit of 9 bytes"):
        read_input_file(f, "input", 9)
    with pytest.raises(InputFileError, match="no such file") as missing:
        read_input_file(tmp_path / "nope", "input", 9)
    assert missing.value.missing
    # A symlink to a device is judged by what it points at.
    link = tmp_path / "link"
    link.symlink_to("/dev/zero")
    with pytest.raises(InputFileError, match="a character device, not a regular file"):
        read_input_file(link, "input", 9)


@pytest.fixture
def fifo(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "pin-fifo"
    os.mkfifo(path, 0o600)
    yield path


def test_pin_source_refuses_fifo_and_device(fifo: Path) -> None:
    # In a child process, so that a hang is a timeout, not a stuck test run.
    code = (
        "import sys\n"
        "from idm.identity.tokens.pin import read_pin_source\n"
        "from idm.identity.tokens.errors import PinUnavailable\n"
        "try:\n    read_pin_source(sys.argv[1])\n"
        "except PinUnavailable as e:\n    print(e)\n"
    )
    for source in (str(fifo), f"file://{fifo}", "/dev/zero"):
        proc = subprocess.run([sys.executable, "-c", code, source], capture_output=True,
                              text=True, timeout=TIMEOUT)
        assert "not a regular file" in proc.stdout, (source, proc.stdout, proc.stderr)


def test_pin_source_still_reads_its_first_line(tmp_path: Path) -> None:
    f = tmp_path / "pin"
    f.write_text("2468\nignored\n")
    f.chmod(0o600)
    assert read_pin_source(str(f)) == "2468"
    f.write_text("1" * 5000)
    with pytest.raises(PinUnavailable, match="larger than the limit of 4,096 bytes"):
        read_pin_source(str(f))


def test_der_certificate_still_loads(tmp_path: Path, files: dict[str, Path]) -> None:
    from cryptography import x509

    leaf = x509.load_pem_x509_certificate(files["cert"].read_bytes())
    d = tmp_path / "leaf.der"
    d.write_bytes(der(leaf))
    proc = idm("verify", "--ca", str(files["ca"]), "--untrusted", str(files["chain"]),
               "--revocation", "off", str(d))
    assert proc.returncode == 0, proc.stderr
