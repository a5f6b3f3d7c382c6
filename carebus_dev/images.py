"""Check and refresh the digests the stock images are pinned by (docker-compose.yml, Dockerfile).

A release engineer with registry access runs `make images-check` (`python -m carebus_dev.images
check`): for every `name:tag@sha256:<digest>` it asks Docker Hub's registry API which digest the
tag names today and fails, naming the image, if any differs or could not be asked. `refresh`
rewrites each pin to the tag's current digest, in the two files and in infra/images.md, and
changes nothing else in them. Neither runs in CI, which has no registry access.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from carebus.runtime.config import PROJECT_ROOT

PINNED_FILES = ("docker-compose.yml", "Dockerfile")
IMAGES_DOC = "infra/images.md"
# Built from this repository's Dockerfile, never pulled: nothing to pin.
LOCAL_IMAGES = frozenset({"carebus"})

AUTH_URL = "https://auth.docker.io/token"
REGISTRY_URL = "https://registry-1.docker.io"
# The multi-architecture index first; a single-platform manifest only for a tag that has no index.
MANIFEST_TYPES = ", ".join(
    (
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    )
)

# `image: <ref>` in compose, `FROM [--platform=…] <ref>` in a Dockerfile.
_REFERENCE_LINE = re.compile(
    r"^(?:[ \t]*image:[ \t]*|FROM[ \t]+(?:--\S+[ \t]+)*)(?P<reference>\S+)", re.MULTILINE
)
_REFERENCE = re.compile(
    r"^(?P<name>[a-z0-9]+(?:[._/-][a-z0-9]+)*):(?P<tag>[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})"
    r"(?:@sha256:(?P<digest>[0-9a-f]{64}))?$"
)
DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


@dataclass(frozen=True)
class Pin:
    """One image reference in one file, with where it stands so it can be rewritten in place."""

    file: str
    name: str
    tag: str
    digest: str | None  # "sha256:<hex>", or None where the reference is by tag only
    start: int
    end: int

    @property
    def repository(self) -> str:
        """The Docker Hub repository: official images live under `library/`."""
        return self.name if "/" in self.name else f"library/{self.name}"

    def __str__(self) -> str:
        return f"{self.name}:{self.tag} ({self.file})"


class RegistryError(Exception):
    """The registry could not say which digest a tag names."""


def find_pins(file: str, text: str) -> list[Pin]:
    """Every stock image reference of `text` (a compose file or a Dockerfile), in order.

    Raises ValueError naming the line for a reference that is neither `name:tag` nor
    `name:tag@sha256:<64 hex>`, so nothing unpinnable passes unnoticed.
    """
    pins = []
    # `FROM build` names an earlier stage of the same Dockerfile, not an image.
    stages = set(re.findall(r"^FROM[ \t].*?[ \t]AS[ \t]+(\S+)", text, re.MULTILINE | re.IGNORECASE))
    for line in _REFERENCE_LINE.finditer(text):
        reference = line["reference"]
        if reference.split(":", 1)[0] in LOCAL_IMAGES or reference in stages:
            continue
        match = _REFERENCE.match(reference)
        if match is None:
            line_number = text.count("\n", 0, line.start("reference")) + 1
            raise ValueError(f"{file}:{line_number}: {reference!r} is not name:tag[@sha256:…]")
        digest = match["digest"]
        pins.append(
            Pin(
                file=file,
                name=match["name"],
                tag=match["tag"],
                digest=f"sha256:{digest}" if digest else None,
                start=line.start("reference"),
                end=line.end("reference"),
            )
        )
    return pins


class DockerHub:
    """Docker Hub's registry API v2, anonymously: a pull token per repository, then a HEAD."""

    def __init__(self, client: httpx.Client) -> None:
        self._client = client

    def digest(self, repository: str, tag: str) -> str:
        """The digest `repository:tag` names now (its index for a multi-architecture image)."""
        try:
            token = self._token(repository)
            response = self._client.head(
                f"{REGISTRY_URL}/v2/{repository}/manifests/{tag}",
                headers={"Authorization": f"Bearer {token}", "Accept": MANIFEST_TYPES},
            )
        except httpx.HTTPError as error:
            raise RegistryError(f"{type(error).__name__}: {error}") from None
        if response.status_code != httpx.codes.OK:
            raise RegistryError(f"the manifest request answered HTTP {response.status_code}")
        digest = response.headers.get("Docker-Content-Digest", "")
        if not DIGEST.match(digest):
            raise RegistryError(f"the manifest response has no usable digest ({digest!r})")
        return str(digest)

    def _token(self, repository: str) -> str:
        response = self._client.get(
            AUTH_URL,
            params={"service": "registry.docker.io", "scope": f"repository:{repository}:pull"},
        )
        if response.status_code != httpx.codes.OK:
            raise RegistryError(f"the token request answered HTTP {response.status_code}")
        try:
            body = response.json()
        except ValueError:
            raise RegistryError("the token response is not JSON") from None
        token = (body.get("token") or body.get("access_token")) if isinstance(body, dict) else None
        if not isinstance(token, str) or not token:
            raise RegistryError("the token response carries no token")
        return token


@dataclass(frozen=True)
class Finding:
    """What the registry said about one pin: `current` is None where it could not be asked."""

    pin: Pin
    current: str | None
    problem: str | None = None

    @property
    def holds(self) -> bool:
        return self.current is not None and self.current == self.pin.digest

    def __str__(self) -> str:
        if self.current is None:
            return f"could not check {self.pin}: {self.problem}"
        if self.pin.digest is None:
            return f"not pinned       {self.pin}: the tag is now {self.current}"
        if self.holds:
            return f"ok               {self.pin} {self.current}"
        return (
            f"differs          {self.pin}: pinned {self.pin.digest}, the tag is now {self.current}"
        )


def check(pins: Iterable[Pin], registry: DockerHub) -> list[Finding]:
    """Ask the registry once per repository and tag; a failure becomes a finding, never a pass."""
    answers: dict[tuple[str, str], Finding] = {}
    findings = []
    for pin in pins:
        key = (pin.repository, pin.tag)
        if key not in answers and "." in pin.name.split("/")[0]:
            answers[key] = Finding(pin, None, "only Docker Hub images can be checked")
        if key not in answers:
            try:
                answers[key] = Finding(pin, registry.digest(pin.repository, pin.tag))
            except RegistryError as error:
                answers[key] = Finding(pin, None, str(error))
        answer = answers[key]
        findings.append(Finding(pin, answer.current, answer.problem))
    return findings


def rewrite(text: str, pins: Sequence[Pin], digests: Mapping[Pin, str]) -> str:
    """`text` with each pin in `digests` set to `name:tag@<its digest>`; every other byte kept."""
    for pin in sorted(pins, key=lambda p: p.start, reverse=True):
        if pin in digests:
            text = f"{text[: pin.start]}{pin.name}:{pin.tag}@{digests[pin]}{text[pin.end :]}"
    return text


def main(
    argv: Sequence[str] | None = None,
    root: Path = PROJECT_ROOT,
    transport: httpx.BaseTransport | None = None,
) -> int:
    """`check` (exit 1 if any pin differs or could not be checked) or `refresh` (exit 1 if any
    could not be checked); `transport` is for tests, which have no network."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args not in (["check"], ["refresh"]):
        print("usage: python -m carebus_dev.images check|refresh", file=sys.stderr)
        return 2
    # Bytes, not text mode: a rewrite must keep every other byte, line endings included.
    texts = {name: (root / name).read_bytes().decode() for name in PINNED_FILES}
    pins = {name: find_pins(name, text) for name, text in texts.items()}
    with httpx.Client(timeout=30.0, follow_redirects=True, transport=transport) as client:
        findings = check([pin for found in pins.values() for pin in found], DockerHub(client))
    for finding in findings:
        print(finding)
    if args == ["refresh"]:
        _refresh(root, texts, pins, findings)
        failed = [f for f in findings if f.current is None]
    else:
        failed = [f for f in findings if not f.holds]
    if failed:
        print(f"{len(failed)} of {len(findings)} pins need attention", file=sys.stderr)
    return 1 if failed else 0


def _refresh(
    root: Path, texts: Mapping[str, str], pins: Mapping[str, list[Pin]], findings: list[Finding]
) -> None:
    changed = {f.pin: f.current for f in findings if f.current is not None and not f.holds}
    if not changed:
        return
    for name, text in texts.items():
        new = rewrite(text, pins[name], changed)
        if new != text:
            (root / name).write_bytes(new.encode())
            print(f"rewrote {name}")
    doc = root / IMAGES_DOC
    text = doc.read_bytes().decode()
    new = text
    for pin, digest in changed.items():
        if pin.digest is not None:
            new = new.replace(pin.digest, digest)
    if new != text:
        doc.write_bytes(new.encode())
        print(f"rewrote the digests in {IMAGES_DOC}: update its evidence column")


if __name__ == "__main__":
    sys.exit(main())
