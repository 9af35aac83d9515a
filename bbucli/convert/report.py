"""What `convert` found, kept and dropped: the `ConvertReport`, and the tally that builds it.

Counting rule: every problem is one `Issue`. Dropping an image drops its objects too, and both are
counted under the image's reason, so `objects_found == objects_kept + sum(dropped_objects)` for
every object a reader could parse (a corrupt file contributes issues but no objects).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from bbucli.convert.raw import Issue


@dataclass(frozen=True)
class ConvertReport:
    """Everything `bbu convert` did. `to_dict()` is what `OUT.report.json` holds (no timing, no
    absolute paths, so reruns are byte-identical); `timing_s` is for the terminal."""

    annotation_files: int
    formats: dict[str, int]
    images_found: int
    images_kept: int
    objects_found: int
    objects_kept: int
    dropped_images: dict[str, int]
    dropped_objects: dict[str, int]
    issue_counts: dict[str, int]
    issues: tuple[Issue, ...]
    label_counts: dict[str, int]
    unknown_labels: dict[str, int]
    teacher_pool: tuple[str, ...]
    split_sizes: dict[str, int]
    outputs: dict[str, str]
    options: dict[str, Any]
    taxonomy: dict[str, str]
    dry_run: bool = False
    #: Sentences about the result a user should act on (an empty val split).
    warnings: tuple[str, ...] = ()
    timing_s: dict[str, float] = field(default_factory=dict)

    def to_dict(self, include_timing: bool = False) -> dict[str, Any]:
        out = {
            "annotation_files": self.annotation_files,
            "formats": dict(self.formats),
            "images_found": self.images_found,
            "images_kept": self.images_kept,
            "objects_found": self.objects_found,
            "objects_kept": self.objects_kept,
            "dropped_images": dict(self.dropped_images),
            "dropped_objects": dict(self.dropped_objects),
            "issue_counts": dict(self.issue_counts),
            "issues": [i.to_dict() for i in self.issues],
            "label_counts": dict(self.label_counts),
            "unknown_labels": dict(self.unknown_labels),
            "teacher_pool": list(self.teacher_pool),
            "split_sizes": dict(self.split_sizes),
            "outputs": dict(self.outputs),
            "options": dict(self.options),
            "taxonomy": dict(self.taxonomy),
            "dry_run": self.dry_run,
            "warnings": list(self.warnings),
        }
        if include_timing:
            out["timing_s"] = dict(self.timing_s)
        return out

    def issues_by_reason(self, reason: str) -> list[Issue]:
        """The issues with one reason code, in the order they were found."""
        return [i for i in self.issues if i.reason == reason]


class Tally:
    """Mutable counters the pipeline fills while it runs; `freeze` turns them into a report."""

    def __init__(self) -> None:
        self.issues: list[Issue] = []
        self.dropped_images: Counter[str] = Counter()
        self.dropped_objects: Counter[str] = Counter()
        self.unknown: Counter[str] = Counter()
        self.objects_found = 0

    def note(self, issue: Issue) -> None:
        """Record one issue and what it cost (its `objects_dropped`, `image_dropped`)."""
        self.issues.append(issue)
        if issue.objects_dropped:
            self.dropped_objects[issue.reason] += issue.objects_dropped
        if issue.image_dropped:
            self.dropped_images[issue.reason] += 1

    def summary(self, limit: int = 5) -> str:
        """`reason n, ...; first issues` — for error messages."""
        counts = ", ".join(f"{r} {n}" for r, n in sorted(Counter(i.reason for i in self.issues).items()))
        shown = "; ".join(f"{i.file}: {i.reason}" + (f" ({i.detail})" if i.detail else "") for i in self.issues[:limit])
        more = f" (and {len(self.issues) - limit} more)" if len(self.issues) > limit else ""
        return f"{counts}. {shown}{more}"

    def freeze(self, label_counts: Counter[str], **fields: Any) -> ConvertReport:
        """The report: these counters, the kept objects per desc, and the pipeline's own fields
        (see ConvertReport)."""
        return ConvertReport(
            dropped_images=dict(sorted(self.dropped_images.items())),
            dropped_objects=dict(sorted(self.dropped_objects.items())),
            issue_counts=dict(sorted(Counter(i.reason for i in self.issues).items())),
            issues=tuple(self.issues),
            label_counts=dict(sorted(label_counts.items(), key=lambda kv: (-kv[1], kv[0]))),
            unknown_labels=dict(sorted(self.unknown.items(), key=lambda kv: (-kv[1], kv[0]))),
            objects_found=self.objects_found,
            **fields,
        )
