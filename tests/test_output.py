"""cli/output.py's tables: fitting a terminal width, colour, the display filter."""

from __future__ import annotations

from idm.cli.output import format_table

FP = "SHA256:vZ08ZMTW7wepnJ7kI3cSzwLhG7S4WzQ6cFwzKvccs+c"
SUBJECT = "CN=Alice Example,OU=Engineering Department,O=Example Corporation,C=XX"
HEADERS = ["TYPE", "SUBJECT", "SSH FINGERPRINT"]
ROWS = [("cert", SUBJECT, FP), ("private", None, FP)]


def test_without_a_width_cells_are_whole() -> None:
    lines = format_table(HEADERS, ROWS)
    assert lines[0].split() == ["TYPE", "SUBJECT", "SSH", "FINGERPRINT"]
    assert SUBJECT in lines[1] and FP in lines[1] and lines[2].endswith(FP)
    assert len(lines) == 3


def test_a_narrow_width_wraps_subjects_and_shortens_fingerprints() -> None:
    lines = format_table(HEADERS, ROWS, width=60)
    assert all(len(line) <= 60 for line in lines)
    subject_start = lines[0].index("SUBJECT")
    fp_start = lines[0].index("SSH FINGERPRINT")
    first = [line[subject_start:fp_start].strip() for line in lines[1:] if line]
    # the subject wraps at its commas and spaces onto continuation lines, nothing lost
    assert len(first) > 3
    wrapped = "".join(part for part in first[: len(first) - 1])
    assert wrapped.replace(" ", "") == SUBJECT.replace(" ", "")
    assert lines[1][fp_start:].endswith("…") and lines[1][fp_start:].startswith("SHA256:")
    assert lines[-1].startswith("private")


def test_too_many_columns_for_the_width_print_one_block_per_row() -> None:
    headers = ["A-LONG-HEADER", "ANOTHER-HEADER", "THIRD-HEADER", "URI"]
    row = ("x" * 20, "y" * 20, "z" * 20, "pkcs11:token=card;serial=1234;object=key;type=private")
    lines = format_table(headers, [row, row], width=40)
    assert all(len(line) <= 40 for line in lines)
    assert lines[0].startswith("A-LONG-HEADER") and "x" * 20 in lines[0]
    assert "" in lines  # a blank line between the two blocks
    uri_lines = [line[len("ANOTHER-HEADER  "):] for line in lines[3:]
                 if line.startswith(("URI ", " "))][:3]
    # wrapped after its semicolons, whole
    assert len(uri_lines) > 1 and "".join(uri_lines) == row[3]


def test_colour_only_when_asked_and_the_filter_always() -> None:
    rows = [("revoked", "CN=evil\x1b[2J\nroot::0:0:", FP)]
    plain = format_table(["STATUS", "SUBJECT", "SSH FINGERPRINT"], rows)
    assert all("\x1b" not in line for line in plain)
    assert "CN=evil?[2J?root::0:0:" in plain[1]
    coloured = format_table(["STATUS", "SUBJECT", "SSH FINGERPRINT"], rows, colour=True)
    assert coloured[0].startswith("\x1b[1m")  # bold header
    assert "\x1b[31mrevoked\x1b[0m" in coloured[1]  # a status in red
    assert "\x1b[2J" not in coloured[1]
