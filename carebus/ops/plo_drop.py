"""`carebus plo drop`: file-based PLO exchange. An agency's system writes each message as a file
into a folder; this hands each one to the adapters with the agency's own token and writes the
AppRec beside it, the way PLO's file exchange (a "katalog" the EHR reads and writes) works.

It runs at the agency, next to its system, with its own token: the adapters never hold an
agency's credential. A message the adapters answered (OK or Avvist) moves to `done/` or
`refused/` with its AppRec in `apprec/`; one they could not take now (503, no connection)
stays where it is and is sent again on the next pass: the same message maps to the same
events, which the gateway takes once.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import click
import httpx

# Plain HTTP only to this machine (a local stack, a TLS-terminating proxy beside it).
_LOCAL: Final = ("http://127.0.0.1", "http://localhost", "http://[::1]")
# A file still being written must not be sent half: only files untouched this long are taken.
SETTLED_S: Final = 2.0


@dataclass(frozen=True, slots=True)
class Outcome:
    """What became of one file: `accepted`, `refused` (with its AppRec) or `retry` (left)."""

    name: str
    result: str
    status: int | None


def drop_pass(folder: Path, client: httpx.Client, token: str, now: float) -> list[Outcome]:
    """Send every settled `*.xml` in `folder` once; the outcomes, in name order."""
    for sub in ("done", "refused", "apprec"):
        (folder / sub).mkdir(exist_ok=True)
    outcomes = []
    for path in sorted(folder.glob("*.xml")):
        try:
            if now - path.stat().st_mtime < SETTLED_S:
                continue
            outcomes.append(_send(path, client, token))
        except OSError:  # moved or removed meanwhile by someone else: next pass
            continue
    return outcomes


def _send(path: Path, client: httpx.Client, token: str) -> Outcome:
    try:
        response = client.post(
            "/v1/adapters/plo",
            content=path.read_bytes(),
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/xml"},
        )
    except httpx.HTTPError:
        return Outcome(path.name, "retry", None)
    is_apprec = response.headers.get("content-type", "").startswith("application/xml")
    if not is_apprec:
        # 401, 413, 429, 503: no AppRec, nothing decided; the file waits (a 401 or 413 for
        # ever, which the operator sees in the log line below).
        return Outcome(path.name, "retry", response.status_code)
    folder = path.parent
    result = "accepted" if response.status_code == 200 else "refused"
    # A name the agency's system reuses must not overwrite an earlier message or its AppRec.
    stem = _unused_stem(folder, path.stem)
    (folder / "apprec" / f"{stem}.apprec.xml").write_bytes(response.content)
    path.replace(folder / ("done" if result == "accepted" else "refused") / f"{stem}.xml")
    return Outcome(path.name, result, response.status_code)


def _unused_stem(folder: Path, stem: str) -> str:
    candidate, n = stem, 1
    while any((folder / sub / f"{candidate}{suffix}").exists() for sub, suffix in _FILED):
        n += 1
        candidate = f"{stem}.{n}"
    return candidate


_FILED: Final = (("apprec", ".apprec.xml"), ("done", ".xml"), ("refused", ".xml"))


@click.group()
def plo() -> None:
    """PLO messages exchanged as files (a folder the agency's system writes to)."""


@plo.command("drop")
@click.option("--folder", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--url", required=True, help="The adapters' base URL (services.adapters).")
@click.option(
    "--token-file",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="A file holding the organisation's system token (never on the command line).",
)
@click.option("--interval", default=5.0, show_default=True, help="Seconds between passes.")
@click.option("--once", is_flag=True, help="One pass, then exit (for cron).")
def drop(folder: Path, url: str, token_file: Path, interval: float, once: bool) -> None:
    """Send each *.xml in FOLDER to the adapters; AppRecs to FOLDER/apprec/, the message to
    FOLDER/done/ (OK) or FOLDER/refused/ (Avvist); unanswered files are tried again."""
    if not url.startswith("https://") and not url.startswith(_LOCAL):
        raise click.BadParameter(
            "must be https:// (the token and the messages go in it)", param_hint="--url"
        )
    token = token_file.read_text().strip()
    folder.mkdir(parents=True, exist_ok=True)
    with httpx.Client(base_url=url.rstrip("/"), timeout=60) as client:
        while True:
            for outcome in drop_pass(folder, client, token, time.time()):
                status = outcome.status if outcome.status is not None else "no answer"
                click.echo(f"{outcome.name}: {outcome.result} ({status})")
            if once:
                return
            time.sleep(interval)
