"""What a pass did, counted from the intake's answers: pages and orders read, lines applied (first
applied by this pass), already applied (by a webhook or an earlier pass), refused (not enough stock, first
seen here), skipped (no SKU, unknown SKU, cancelled before taken, nothing taken to restock), and the
orders found only by polling (a line of theirs first taken, or refused, by this pass)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from stocksync.library import Status

FRESH = (Status.OK, Status.INSUFFICIENT)


@dataclass
class PassReport:
    channel: str
    pages: int = 0
    orders: int = 0
    applied: int = 0
    already: int = 0
    refused: int = 0
    skipped: int = 0
    found_by_polling: int = 0
    gap_ms: int = 0  # time not read because the cursor was older than the references' retention

    def count(self, answer: dict[str, Any], found: set[str]) -> None:
        """Count one Intake.apply answer; the order ids of lines this pass took first go into `found`."""
        for line in answer.get("lines", ()):
            status, replayed = line.get("status"), line.get("replayed", False)
            if status in FRESH and not replayed and line.get("op") == "take":
                found.add(line.get("order_id") or line.get("line", ""))
            if status == Status.OK and not replayed:
                self.applied += 1
            elif status == Status.INSUFFICIENT and not replayed:
                self.refused += 1
            elif replayed or status == "restocked_already":
                self.already += 1
            else:
                self.skipped += 1

    def counters(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("channel", "gap_ms")}

    def add(self, other: PassReport) -> None:
        for name, value in other.counters().items():
            setattr(self, name, getattr(self, name) + value)

    def line(self) -> str:
        return (f"{self.channel}: {self.pages} pages, {self.orders} orders read, {self.applied} lines applied, "
                f"{self.already} already applied, {self.refused} refused, {self.skipped} skipped")

    def summary(self) -> str:
        return f"{self.line()}; {self.found_by_polling} orders found only by polling"
