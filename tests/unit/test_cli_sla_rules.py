"""`carebus up --sla-rules FILE` refuses a bad rule file before it touches the stack."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from carebus.ops.cli import main


def test_a_bad_override_is_refused_naming_the_rule_and_field(tmp_path: Path) -> None:
    """An override with a bad duration exits 1 naming the rule and the key; nothing starts."""
    override = tmp_path / "sla.yaml"
    override.write_text(
        'version: "t"\nrules:\n  - {id: health_info.after_admission, deadline: PT4X}\n',
        encoding="utf-8",
    )
    result = CliRunner().invoke(main, ["up", "--sla-rules", str(override)])
    assert result.exit_code == 1
    assert "rule health_info.after_admission: deadline" in result.output
    assert "started" not in result.output


def test_a_missing_override_file_is_a_usage_error(tmp_path: Path) -> None:
    """A path that does not exist is refused by the option itself (exit 2)."""
    result = CliRunner().invoke(main, ["up", "--sla-rules", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 2
    assert "does not exist" in result.output


def test_an_override_for_an_unknown_rule_must_be_complete(tmp_path: Path) -> None:
    """An override id that is not in the base file is a new rule and must be complete."""
    override = tmp_path / "sla.yaml"
    override.write_text(
        'version: "t"\nrules:\n  - {id: no.such.rule, deadline: PT4S}\n', encoding="utf-8"
    )
    result = CliRunner().invoke(main, ["up", "--sla-rules", str(override)])
    assert result.exit_code == 1
    assert "rule no.such.rule: title: required" in result.output
