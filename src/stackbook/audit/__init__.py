"""Compliance audit: rules, findings and the registry that holds them.

A rule has an id (``K8S-001``, ``PG-003`` ...), a title, a severity, the controls
it serves (SOC 2 and ISO 27001 Annex A) and how to fix it. A check function
registered for a rule yields one ``Finding`` per resource it looked at. Rule
modules register themselves at import: ``kubernetes``, ``postgres``,
``secrets_scan``, ``operations``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

SEVERITIES = ("low", "medium", "high", "critical")


@dataclass(frozen=True)
class Rule:
    id: str
    title: str
    severity: str
    controls: tuple[str, ...]
    fix: str
    area: str  # kubernetes | postgres | secrets | operations

    def __post_init__(self):
        if self.severity not in SEVERITIES:
            raise ValueError(f"rule {self.id}: severity must be one of {SEVERITIES}")


@dataclass
class Finding:
    id: str
    status: str
    resource: str
    evidence: str
    severity: str = ""
    controls: list[str] = field(default_factory=list)
    title: str = ""
    fix: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


RULES: dict[str, Rule] = {}
CHECKS: dict[str, Callable[..., Iterable[Finding]]] = {}


def register(rule: Rule) -> Callable:
    """Decorator: ``@register(Rule(...))`` over a function that yields Findings."""
    return functools.partial(_add_check, rule)


def _add_check(rule: Rule, fn: Callable[..., Iterable[Finding]]) -> Callable[..., Iterable[Finding]]:
    if rule.id in RULES:
        raise ValueError(f"duplicate audit rule id {rule.id}")
    RULES[rule.id] = rule
    CHECKS[rule.id] = fn
    return fn


def finding(rule_id: str, status: str, resource: str, evidence: str) -> Finding:
    """A finding carrying its rule's severity, controls, title and fix."""
    rule = RULES[rule_id]
    return Finding(id=rule_id, status=status, resource=resource, evidence=evidence, severity=rule.severity,
                   controls=list(rule.controls), title=rule.title, fix=rule.fix)


def rule_ids(area: str) -> list[str]:
    """The ids of an area's rules, sorted."""
    return sorted(r.id for r in RULES.values() if r.area == area)


def run_checks(area: str, subject: Any, rules: Iterable[str] | None = None) -> list[Finding]:
    """The findings of the area's rules (all, or those named) over ``subject``, rule by rule."""
    out: list[Finding] = []
    for rule_id in rules or rule_ids(area):
        out.extend(CHECKS[rule_id](subject))
    return out


def at_or_above(severity: str, threshold: str) -> bool:
    return SEVERITIES.index(severity) >= SEVERITIES.index(threshold)
