"""Synthetic units of competency: realistic-looking rows for the demo, tests and benchmarks.

Deterministic for a given seed. Roughly one unit in ten is superseded or restricted, so the
example job's `where` clause has something to filter.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

_PACKAGES = [
    ("BSB", "Business Services"),
    ("CHC", "Community Services"),
    ("HLT", "Health"),
    ("CPC", "Construction, Plumbing and Services"),
    ("SIT", "Tourism, Travel and Hospitality"),
    ("ICT", "Information and Communications Technology"),
    ("TLI", "Transport and Logistics"),
    ("AUR", "Automotive Retail, Service and Repair"),
]
_VERBS = ["Apply", "Implement", "Coordinate", "Monitor", "Develop", "Manage", "Maintain", "Plan"]
_OBJECTS = [
    "workplace health and safety procedures",
    "customer service standards",
    "infection prevention and control",
    "inventory and stock control",
    "team work priorities",
    "risk assessments for site work",
    "client records and confidentiality",
    "sustainable work practices",
    "basic electrical safety checks",
    "food safety programs",
    "network security controls",
    "load restraint and vehicle checks",
]
_ELEMENT_VERBS = ["Prepare for", "Carry out", "Review", "Document", "Communicate", "Evaluate"]
_CRITERIA = [
    "Identify relevant legislation, codes of practice and organisational policies",
    "Consult with stakeholders and confirm requirements",
    "Select and check equipment and resources for the task",
    "Complete the task according to procedures and safety requirements",
    "Record outcomes accurately in organisational systems",
    "Report hazards, incidents and non-conformances to the responsible person",
    "Seek feedback and identify improvements to practice",
]
_KNOWLEDGE = [
    "relevant work health and safety legislation and duty of care",
    "organisational policies and procedures for the work area",
    "hierarchy of risk control",
    "record-keeping and privacy requirements",
    "communication techniques for diverse clients and colleagues",
    "quality assurance processes",
    "environmental and sustainability considerations",
]


def synthetic_units(count: int, seed: int = 16) -> Iterator[dict[str, Any]]:
    rng = random.Random(seed)  # noqa: S311 - reproducible fake data, not secrets
    for number in range(1, count + 1):
        prefix, sector = rng.choice(_PACKAGES)
        verb, thing = rng.choice(_VERBS), rng.choice(_OBJECTS)
        elements = []
        criteria = []
        for e in range(1, rng.randint(3, 5) + 1):
            elements.append(f"{e}. {rng.choice(_ELEMENT_VERBS)} {thing}")
            for c in range(1, rng.randint(2, 4) + 1):
                criteria.append(f"{e}.{c} {rng.choice(_CRITERIA)}")
        knowledge = rng.sample(_KNOWLEDGE, k=rng.randint(3, 5))
        yield {
            "id": number,
            "unit_code": f"{prefix}{rng.choice('ABCDEFGHJKLMNPRSTW')}{rng.randint(100, 899)}",
            "title": f"{verb} {thing}",
            "application": (
                f"This unit describes the skills and knowledge required to {verb.lower()} {thing} "
                f"in the {sector.lower()} sector. It applies to workers who take responsibility "
                "for their own work and provide some guidance to others."
            ),
            "elements": "\n".join(elements),
            "performance_criteria": "\n".join(criteria),
            "knowledge_evidence": "\n".join(f"- {item}" for item in knowledge),
            "status": "Superseded" if rng.random() < 0.05 else "Current",
            "restricted_access": 1 if rng.random() < 0.05 else 0,
        }


def write_jsonl(path: Path, count: int, seed: int = 16) -> int:
    with path.open("w", encoding="utf-8") as handle:
        for unit in synthetic_units(count, seed):
            handle.write(json.dumps(unit) + "\n")
    return count
