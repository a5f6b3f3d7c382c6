"""`carebus plo drop` (carebus.ops.plo_drop): each settled file sent once, its AppRec kept, the
message filed by the answer; a file without an answer waits for the next pass."""

from __future__ import annotations

import os
from pathlib import Path

import httpx

from carebus.ops.plo_drop import SETTLED_S, drop_pass

APPREC = b"<AppRec/>"


def client(answers: dict[bytes, httpx.Response | Exception]) -> httpx.Client:
    def answer(request: httpx.Request) -> httpx.Response:
        assert request.headers["authorization"] == "Bearer t0ken"
        reply = answers[request.content]
        if isinstance(reply, Exception):
            raise reply
        return reply

    return httpx.Client(base_url="http://adapters", transport=httpx.MockTransport(answer))


def xml(status: int) -> httpx.Response:
    return httpx.Response(status, content=APPREC, headers={"content-type": "application/xml"})


def settled(folder: Path, name: str, content: bytes, age_s: float = 60.0) -> Path:
    path = folder / name
    path.write_bytes(content)
    past = path.stat().st_mtime - age_s
    os.utime(path, (past, past))
    return path


def test_answered_files_are_filed_with_their_apprec_and_unanswered_ones_wait(
    tmp_path: Path,
) -> None:
    """OK → done/, Avvist → refused/, both with apprec/<name>.apprec.xml; 503 and a broken
    connection leave the file; a file still being written is not touched."""
    settled(tmp_path, "a.xml", b"ok")
    settled(tmp_path, "b.xml", b"refused")
    settled(tmp_path, "c.xml", b"busy")
    settled(tmp_path, "d.xml", b"down")
    settled(tmp_path, "e.xml", b"fresh", age_s=0)
    now = (tmp_path / "a.xml").stat().st_mtime + 60 + SETTLED_S / 2
    answers: dict[bytes, httpx.Response | Exception] = {
        b"ok": xml(200),
        b"refused": xml(422),
        b"busy": httpx.Response(503, json={"error": {}}, headers={"retry-after": "5"}),
        b"down": httpx.ConnectError("no route"),
    }
    outcomes = drop_pass(tmp_path, client(answers), "t0ken", now)
    assert [(o.name, o.result) for o in outcomes] == [
        ("a.xml", "accepted"),
        ("b.xml", "refused"),
        ("c.xml", "retry"),
        ("d.xml", "retry"),
    ]
    assert (tmp_path / "done" / "a.xml").read_bytes() == b"ok"
    assert (tmp_path / "refused" / "b.xml").read_bytes() == b"refused"
    assert (tmp_path / "apprec" / "a.apprec.xml").read_bytes() == APPREC
    assert (tmp_path / "apprec" / "b.apprec.xml").read_bytes() == APPREC
    assert sorted(p.name for p in tmp_path.glob("*.xml")) == ["c.xml", "d.xml", "e.xml"]


def test_a_reused_name_never_overwrites_an_earlier_message_or_its_apprec(tmp_path: Path) -> None:
    """The second `a.xml` is filed as `a.2.xml` beside the first."""
    for content in (b"ok", b"ok again"):
        settled(tmp_path, "a.xml", content)
        now = (tmp_path / "a.xml").stat().st_mtime + 60
        drop_pass(tmp_path, client({b"ok": xml(200), b"ok again": xml(200)}), "t0ken", now)
    assert (tmp_path / "done" / "a.xml").read_bytes() == b"ok"
    assert (tmp_path / "done" / "a.2.xml").read_bytes() == b"ok again"
    assert (tmp_path / "apprec" / "a.2.apprec.xml").exists()
