"""Inventory in and out: every SKU page by page, a CSV file in (import) and out (export).

    list_page(store, cursor, limit, prefix)    a page of SKUs with their stock, and the next cursor
    parse_csv(data)                            the rows of a CSV file, and the rows refused, with their lines
    import_rows(store, parsed, dry_run=...)    set each row's quantity exactly once (or say what it would do)
    export_lines(store)                        every SKU as CSV lines

Listing walks every partition with SCAN (safe on a live server), so a page comes in no particular order, a
SKU created during the walk may be missed and one may come twice (SCAN's own rule). The cursor is opaque
(base64 of the partition, the SCAN cursor and the few SKUs SCAN answered beyond the page), stable (the same
cursor gives the same continuation, on any API process) and tied to its prefix. A page holds at most
`limit` SKUs, possibly fewer, even none, when a prefix is rare: go on while `next_cursor` is not null.

CSV import: a header line naming the columns `sku`, `available` and optionally `expected_version` (the
columns of an export, `reserved`, `version`, `updated_ms` and `source`, are accepted and ignored, so an
export can be imported as it is). Each row is set through stocksync_set under a reference derived from
the file's content and the row (`csv:<sha-256 of the file, 16 hex>:<line>`), so importing the same file
again (from the CLI or the API, within the references' retention, STOCKSYNC_IDEM_TTL) changes nothing: each
row answers its first outcome. A row that cannot be read (a bad SKU, a quantity that is not a whole
number, a SKU listed twice) is refused with its line number and the others are imported; a row whose
expected_version differs from the SKU's is refused (conflict) and changes nothing. Every imported row is
a change (a new version, an event, a push to every channel), even when the quantity is the same:
`dry_run` counts those as unchanged.
"""

from __future__ import annotations

import base64
import binascii
import csv
import hashlib
import io
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import orjson

from . import connection
from .library import Stock
from .limits import MAX_QTY, MAX_VERSION
from .store import StockStore
from .validate import Invalid, invalid, want_sku

COLUMNS = ("sku", "available", "expected_version")
EXPORT_COLUMNS = ("sku", "available", "reserved", "version", "updated_ms", "source")
CHUNK = 500  # rows (or SKUs) per pipelined round trip
MAX_PAGE = 1000  # SKUs per page at most
MAX_ROUNDS = 64  # SCAN calls per page at most (a rare prefix ends a page early, with its cursor)
MAX_COUNT = 256  # SCAN COUNT at most (it grows while a round finds nothing; it bounds what SCAN can
# answer beyond a page, which the cursor carries)


# Listing ---------------------------------------------------------------------------------------------


@dataclass
class Page:
    items: list[Stock]
    next_cursor: str | None


@dataclass
class _Cursor:
    partition: int = 0
    scan: int = 0
    rest: list[str] = field(default_factory=list)  # SKUs SCAN answered beyond the last page
    prefix: str = ""

    def encode(self) -> str:
        raw = orjson.dumps([1, self.partition, self.scan, self.rest, self.prefix])
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def decode(cls, text: str, prefix: str, partitions: int) -> _Cursor:
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
            version, partition, scan, rest, was = orjson.loads(raw)
            ok = (version == 1 and isinstance(partition, int) and 0 <= partition <= partitions
                  and isinstance(scan, int) and scan >= 0 and isinstance(rest, list)
                  and all(isinstance(s, str) for s in rest) and isinstance(was, str))
        except (binascii.Error, ValueError, TypeError):
            ok = False
        if not ok:
            raise invalid("cursor", "is not a cursor this API gave (pass next_cursor as it came)")
        if was != prefix:
            raise invalid("cursor", f"was given for prefix {was!r}, not {prefix!r}")
        return cls(partition, scan, rest, prefix)


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


async def _scan(store: StockStore, partition: int, cursor: int, prefix: str, count: int) -> tuple[int, list[str]]:
    """One SCAN call over a partition's SKU hashes: (next cursor, SKUs)."""
    redis, keys = store.redis, store.keys
    pattern = keys.sku_pattern(partition)[:-1] + _glob_escape(prefix) + "*"
    head = len(keys.tag(partition)) + len(":sku:")
    if connection.is_cluster(redis):  # the primary holding the partition's slot, alone
        node = redis.get_node_from_key(keys.events(partition))
        cursors, found = await redis.scan(cursor, match=pattern, count=count, target_nodes=node)
        cursor = next(iter(cursors.values()))
    else:
        cursor, found = await redis.scan(cursor, match=pattern, count=count)
    return int(cursor), [k[head:] for k in found]


async def list_page(store: StockStore, cursor: str | None = None, limit: int = 100, prefix: str = "") -> Page:
    """A page of SKUs (with their stock) after `cursor`, those starting with `prefix` only."""
    if not 1 <= limit <= MAX_PAGE:
        raise invalid("limit", f"must be a whole number from 1 to {MAX_PAGE}")
    partitions = store.keys.partitions
    at = _Cursor.decode(cursor, prefix, partitions) if cursor else _Cursor(prefix=prefix)
    found, seen = [], set()
    for sku in at.rest:
        if sku not in seen:
            seen.add(sku)
            found.append(sku)
    count, rounds, skus = 0, 0, [""]
    while len(found) < limit and at.partition < partitions and rounds < MAX_ROUNDS:
        # as many as the page lacks; twice as many as last time after a round that found none (a sparse
        # prefix, or SKUs sparse among other keys), up to MAX_COUNT
        count = min(max(limit - len(found), 10, 0 if skus else 2 * count), MAX_COUNT)
        at.scan, skus = await _scan(store, at.partition, at.scan, prefix, count)
        rounds += 1
        for sku in skus:
            if sku not in seen:
                seen.add(sku)
                found.append(sku)
        if at.scan == 0:
            at.partition += 1
    at.rest = found[limit:]
    items = [s for s in await store.get_many(found[:limit]) if s is not None]  # (deleted meanwhile: left out)
    done = at.partition >= partitions and not at.rest
    return Page(items, None if done else at.encode())


# Import ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Row:
    line: int
    sku: str
    available: int
    expected_version: int | None


@dataclass(frozen=True, slots=True)
class Refused:
    line: int
    sku: str
    reason: str

    def text(self) -> str:
        return f"line {self.line}: {self.sku or '(no SKU)'}: {self.reason}"


@dataclass
class Parsed:
    rows: list[Row]
    refused: list[Refused]
    digest: str  # of the file's content: the rows' references derive from it

    def reference(self, row: Row) -> str:
        return f"csv:{self.digest}:{row.line}"


def _whole(text: str, name: str, high: int) -> int:
    text = text.strip()
    if not text.isdigit():
        raise invalid(name, f"must be a whole number from 0 to {high}, got {text!r}")
    value = int(text)
    if value > high:
        raise invalid(name, f"must be at most {high}, got {value}")
    return value


def _header(names: list[str]) -> dict[str, int]:
    columns = {name.strip().lower(): i for i, name in enumerate(names)}
    unknown = sorted(set(columns) - set(COLUMNS) - set(EXPORT_COLUMNS))
    if unknown or "sku" not in columns or "available" not in columns:
        raise Invalid(f"the first line must name the columns sku, available and optionally expected_version "
                      f"(found {', '.join(repr(n) for n in names) or 'nothing'})", "header")
    return columns


def _row(line: int, cells: list[str], columns: dict[str, int]) -> Row:
    def cell(name: str) -> str:
        i = columns.get(name)
        return cells[i] if i is not None and i < len(cells) else ""

    sku = want_sku(cell("sku"), "sku")
    expected = cell("expected_version").strip()
    return Row(line, sku, _whole(cell("available"), "available", MAX_QTY),
               _whole(expected, "expected_version", MAX_VERSION) if expected else None)


def parse_csv(data: bytes) -> Parsed:
    """The rows of a CSV file; rows that cannot be read are refused with their line (the rest stand). A
    file that is not UTF-8 text or whose first line does not name the columns raises Invalid."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise Invalid(f"the file is not UTF-8 text ({e.reason} at byte {e.start})", "file") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    columns = None
    rows: list[Row] = []
    refused: list[Refused] = []
    lines: dict[str, int] = {}
    try:
        line = 1  # where the next record starts (a quoted field may span lines)
        for cells in reader:
            line, start = reader.line_num + 1, line
            if not any(c.strip() for c in cells):
                continue
            if columns is None:
                columns = _header(cells)
                continue
            try:
                row = _row(start, cells, columns)
            except Invalid as e:
                sku = cells[columns["sku"]] if columns["sku"] < len(cells) else ""
                refused.append(Refused(start, sku[:80], str(e)))
                continue
            if row.sku in lines:
                refused.append(Refused(start, row.sku, f"already on line {lines[row.sku]}"))
                continue
            lines[row.sku] = start
            rows.append(row)
    except csv.Error as e:
        raise Invalid(f"line {reader.line_num}: not valid CSV: {e}", "file") from None
    if columns is None:
        raise Invalid("the file is empty: its first line must name the columns sku and available", "file")
    return Parsed(rows, refused, hashlib.sha256(data).hexdigest()[:16])


@dataclass
class ImportReport:
    rows: int = 0
    applied: int = 0  # set now
    replayed: int = 0  # seen by an earlier import of the same file: nothing changed (dry run: a row refused
    # then, a conflict, is counted here: it would answer its first outcome again)
    refused: list[Refused] = field(default_factory=list)
    dry_run: bool = False
    # dry run only: what the rows would do
    new: int = 0
    changed: int = 0
    unchanged: int = 0

    @property
    def ok(self) -> bool:
        return not self.refused

    def summary(self) -> str:
        if self.dry_run:
            return (f"dry run: {self.rows} rows: {self.new} new SKUs, {self.changed} changed, {self.unchanged} "
                    f"unchanged (set again all the same), {self.replayed} imported already, {len(self.refused)} "
                    "refused; nothing was changed")
        return (f"{self.rows} rows: {self.applied} set, {self.replayed} imported already (unchanged), "
                f"{len(self.refused)} refused")

    def as_dict(self) -> dict:
        doc = {"rows": self.rows, "applied": self.applied, "replayed": self.replayed, "dry_run": self.dry_run,
               "refused": [{"line": r.line, "sku": r.sku, "reason": r.reason} for r in self.refused]}
        if self.dry_run:
            doc.update(new=self.new, changed=self.changed, unchanged=self.unchanged)
        return doc


Progress = Callable[[int, int], None]  # (rows done, rows in all)


async def import_rows(store: StockStore, parsed: Parsed, *, dry_run: bool = False, source: str = "import",
                      progress: Progress | None = None) -> ImportReport:
    """Set every row's quantity exactly once (CHUNK rows a round trip); with dry_run, change nothing and
    count what each row would do."""
    report = ImportReport(rows=len(parsed.rows) + len(parsed.refused), refused=list(parsed.refused), dry_run=dry_run)
    total, done = len(parsed.rows), 0
    for i in range(0, total, CHUNK):
        chunk = parsed.rows[i : i + CHUNK]
        if dry_run:
            await _plan(store, parsed, chunk, report)
        else:
            await _apply(store, parsed, chunk, source, report)
        done += len(chunk)
        if progress is not None:
            progress(done, total)
    report.refused.sort(key=lambda r: r.line)
    return report


async def _apply(store: StockStore, parsed: Parsed, chunk: list[Row], source: str, report: ImportReport) -> None:
    refs = {row.sku: parsed.reference(row) for row in chunk}
    outcomes = await store.set_many([(r.sku, r.available, r.expected_version) for r in chunk],
                                    ref_of=refs.__getitem__, source=source)
    for row, o in zip(chunk, outcomes, strict=True):
        if isinstance(o, Exception):
            report.refused.append(Refused(row.line, row.sku, str(o)))
        elif o.status == "conflict":
            report.refused.append(Refused(row.line, row.sku, f"conflict: the SKU's version is {o.version}, "
                                                             f"the file expects {row.expected_version}"))
        elif o.replayed:
            report.replayed += 1
        else:
            report.applied += 1


async def _plan(store: StockStore, parsed: Parsed, chunk: list[Row], report: ImportReport) -> None:
    stocks = await store.get_many([r.sku for r in chunk])
    seen = await store.references_exist([(r.sku, parsed.reference(r)) for r in chunk])
    for row, stock, imported in zip(chunk, stocks, seen, strict=True):
        if imported:
            report.replayed += 1
        elif row.expected_version is not None and (stock.version if stock else 0) != row.expected_version:
            report.refused.append(Refused(row.line, row.sku, f"conflict: the SKU's version is "
                                                             f"{stock.version if stock else 0}, the file expects "
                                                             f"{row.expected_version}"))
        elif stock is None:
            report.new += 1
        elif stock.available == row.available:
            report.unchanged += 1
        else:
            report.changed += 1


# Export ----------------------------------------------------------------------------------------------


def _csv_line(values) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerow(values)
    return out.getvalue()


async def export_lines(store: StockStore) -> AsyncIterator[str]:
    """Every SKU as CSV (EXPORT_COLUMNS), CHUNK SKUs a round trip: a header line, then one line per SKU,
    handed out a chunk at a time."""
    yield _csv_line(EXPORT_COLUMNS)
    batch: list[str] = []
    async for sku in store.skus(count=CHUNK):
        batch.append(sku)
        if len(batch) >= CHUNK:
            yield await _export_chunk(store, batch)
            batch = []
    if batch:
        yield await _export_chunk(store, batch)


async def _export_chunk(store: StockStore, skus: list[str]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    for s in await store.get_many(skus):
        if s is not None:
            writer.writerow((s.sku, s.available, s.reserved, s.version, s.updated_ms, s.source))
    return out.getvalue()


__all__ = ["COLUMNS", "EXPORT_COLUMNS", "ImportReport", "Page", "Parsed", "Refused", "Row", "export_lines",
           "import_rows", "list_page", "parse_csv"]
