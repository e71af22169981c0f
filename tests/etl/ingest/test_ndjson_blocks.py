"""Reading NDJSON in blocks (etl.fhir.ndjson.file_blocks): every line once, with its own line number."""
from __future__ import annotations

from etl.fhir.ndjson import file_blocks
from etl.ingest.worker import check_block


def test_blocks_keep_every_line_and_its_number_across_block_edges(tmp_path):
    lines = [b'{"n": %d, "pad": "%s"}' % (i, b"x" * (i % 37)) for i in range(1, 301)]
    lines[149] = b'{"n": 150, "long": "' + b"y" * 5000 + b'"}'  # longer than a block
    lines[199] = b""  # an empty line keeps its number and yields nothing
    path = tmp_path / "Patient.ndjson"
    path.write_bytes(b"\r\n".join(lines))  # Windows line ends, no newline after the last line
    numbered = []
    for block in file_blocks(path, "Patient", size=1024):
        for offset, text in enumerate(block.data.split(b"\n")):
            if text.strip():
                numbered.append((block.first_line + offset, text.strip()))
    assert numbered == [(i + 1, line) for i, line in enumerate(lines) if line]


def test_a_checked_block_names_file_and_line_of_each_bad_line(tmp_path):
    path = tmp_path / "Patient.ndjson"
    path.write_bytes(b'{"resourceType": "Patient", "id": "a"}\n\nnot json\n')
    [block] = list(file_blocks(path, "Patient"))
    valid, bad = check_block(block)
    # Valid lines cross back as a run of plain tuples in RawRow's order (id, versionId, lastUpdated, None, source, ...)
    assert valid.resource_type == "Patient" and len(valid.rows) == 1
    assert valid.rows[0][:5] == ("a", None, None, None, f"{path}:1")
    assert bad.source == f"{path}:3" and bad.errors[0].startswith("invalid JSON")


def test_a_run_keeps_the_order_of_valid_and_bad_lines(tmp_path):
    """A bad line ends a run: the loading process takes rows and quarantine rows in the order of the file."""
    path = tmp_path / "Patient.ndjson"
    path.write_bytes(b'{"resourceType": "Patient", "id": "a"}\n{"resourceType": "Patient", "id": "b"}\nnot json\n'
                     b'{"resourceType": "Patient", "id": "c"}\n')
    [block] = list(file_blocks(path, "Patient"))
    first, bad, second = check_block(block)
    assert [row[0] for row in first.rows] == ["a", "b"] and [row[0] for row in second.rows] == ["c"]
    assert bad.source == f"{path}:3"
