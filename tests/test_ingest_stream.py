"""The ingest holds one large table at a time (`sendwise.ingest.run.TableRun`), and leaves the home exactly as
the ingest that held the whole export in memory did: the raw tables (values and dtypes as `load_table` reads
them), the quarantine, the reports and the recorded as-of.

`GOLDEN` holds the digests of what that whole-export ingest left after `two_ingests` (measured once with it on
the same seeded world). A change that alters what an ingest stores changes them: check the new outputs are
right, then print the new digests with `python -m tests.test_ingest_stream`.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import sys
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from sendwise import asof, contract, raw, timezones
from sendwise.ingest import ingest
from sendwise.ingest.appended import append_events, check_events, pending_parts, read_parts
from sendwise.ingest.batch import Batch
from sendwise.ingest.merge import merge
from sendwise.ingest.run import merge_appended
from sendwise.ingest.spill import LOCK, PREFIX, SUFFIX, remove_stray_folders, spill_folder
from sendwise.settings import Settings
from sendwise.simulator import simulate
from sendwise.simulator.options import Realism
from sendwise.tombstones import add_tombstones

GOLDEN = {
    "raw/customers": "37df7570c37eddc7",
    "raw/campaigns": "3666af72f119a54c",
    "raw/email_events": "81be4498bd056406",
    "raw/site_events": "2e88510dc5cfeb78",
    "raw/offers": "65e2b39fc086b1c1",
    "raw/offer_events": "21742a6a6d9f2f4b",
    "quarantine/campaigns": "7a5334791e639b1a",
    "quarantine/customers": "240e463ed7582915",
    "quarantine/email_events": "e5ba94ba7b0075cd",
    "quarantine/offer_events": "ed52e81e1a35b2e7",
    "quarantine/site_events": "b840279410737cf0",
    "report/1": "c5b8e2c6921f7610",
    "report/2": "71c8ec15fb977932",
    "as_of": "00aba11afe4733e5",
}
VOLATILE_REPORT_FIELDS = ("started_at", "seconds", "data_dir", "home", "report_file")


def frame_digest(frame: pd.DataFrame | None) -> str:
    """A digest of a frame's columns, dtypes and values, in order."""
    if frame is None:
        return "absent"
    digest = hashlib.sha256(json.dumps([[str(c), str(t)] for c, t in frame.dtypes.items()]).encode())
    digest.update(pd.util.hash_pandas_object(frame, index=True).to_numpy().tobytes())
    return digest.hexdigest()[:16]


def home_digests(settings: Settings, reports: list[dict[str, object]]) -> dict[str, str]:
    """Digests of everything an ingest leaves in the home, its time-dependent fields left out."""
    digests = {f"raw/{name}": frame_digest(raw.load_table(settings, name)) for name in contract.TABLES}
    for path in sorted(settings.quarantine_dir.glob("*.parquet")):
        digests[f"quarantine/{path.stem}"] = frame_digest(pd.read_parquet(path).drop(columns="_ingested_at"))
    for number, report in enumerate(reports, 1):
        kept = {k: v for k, v in report.items() if k not in VOLATILE_REPORT_FIELDS}
        digests[f"report/{number}"] = hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()[:16]
    recorded = [{k: v for k, v in entry.items() if k != "data_dir"} for entry in asof.recorded(settings)]
    digests["as_of"] = hashlib.sha256(json.dumps(recorded, sort_keys=True).encode()).hexdigest()[:16]
    return digests


def second_export(world: Path, folder: Path) -> None:
    """An export after the world's: customers updated, email events repeated, new, bad and without ids;
    no site events, offers or offer events (the store keeps those)."""
    folder.mkdir()
    customers = pd.read_csv(world / "customers.csv", dtype=str, keep_default_na=False, encoding="utf-8-sig")
    changed = customers.head(20).copy()
    changed["country"] = "DE"
    changed["timezone"] = ""
    changed["updated_at"] = "2026-11-02T00:00:00Z"
    changed.to_csv(folder / "customers.csv", index=False)
    emails = pd.read_parquet(world / "email_events").head(40)
    text = emails.astype(str).where(emails.notna(), "")
    text["occurred_at"] = emails["occurred_at"].dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    new = text.head(10).copy()
    new["event_id"] = [f"n-{i}" for i in range(10)]
    new.loc[new.index[:3], "event_id"] = ""  # ids hashed from the other columns
    new.loc[new.index[3], "occurred_at"] = "not a time"
    new.loc[new.index[4], "event"] = "teleported"
    pd.concat([text, new]).to_csv(folder / "email_events.csv", index=False)
    (folder / "campaigns.csv").write_bytes((world / "campaigns.csv").read_bytes())


def two_ingests(root: Path, **sizes: int) -> dict[str, str]:
    """A seeded world ingested, events appended and a customer erased, then a second export ingested (``sizes``:
    the ingest's chunk and bucket settings)."""
    world = root / "world"
    # the digests are of the world the simulator made before its recent-activity effect, which it makes again
    # without it
    simulate(world, customers=150, days=10, seed=3, progress=False, realism=Realism(recent_activity=False))
    settings = Settings(home=root / "home", **sizes)
    reports = [ingest(world, settings, progress=False).model_dump(mode="json")]
    second_export(world, root / "second")
    first = pd.read_csv(world / "customers.csv", dtype=str, encoding="utf-8-sig")["customer_id"]
    session = {"table": "site_events", "event": "session_start", "occurred_at": "2026-11-01T10:00:00Z"}
    rows = [{**session, "customer_id": first.iloc[i]} for i in (30, 31, 32)]
    rows.append(
        {
            "table": "email_events",
            "event_id": "appended-1",
            "customer_id": first.iloc[33],
            "message_id": "m-appended",
            "event": "open",
            "occurred_at": "2026-11-01T11:00:00Z",
        }
    )
    append_events(settings, check_events(rows, settings))
    add_tombstones(settings, [first.iloc[5], first.iloc[31]])
    report = ingest(root / "second", settings, as_of="2026-11-02T00:00:00Z", progress=False)
    reports.append(report.model_dump(mode="json"))
    assert not list(settings.home.glob(f"{PREFIX}*")), "the ingest's spill folder is removed"
    return home_digests(settings, reports)


def test_the_ingest_leaves_what_the_whole_export_ingest_left(tmp_path: Path) -> None:
    assert two_ingests(tmp_path) == GOLDEN


def test_tiny_chunks_and_buckets_leave_the_same_home(tmp_path: Path) -> None:
    """Files read 97 rows at a time and event tables merged about 300 rows at a time (several buckets by event
    id, several time ranges) leave what the whole-export ingest left."""
    assert two_ingests(tmp_path, ingest_chunk_rows=97, ingest_bucket_rows=300) == GOLDEN
    settings = Settings(home=tmp_path / "home")
    for name in ("email_events", "site_events"):
        written = pq.ParquetFile(raw.table_path(settings, name))
        assert written.metadata.num_rows > 1_000
        assert written.num_row_groups >= 4, "written a time range at a time"


def test_materialize_merges_appended_parts_in_pieces_as_the_whole_merge_did(tmp_path: Path) -> None:
    """`sendwise materialize` merges appended parts with the stored table in pieces of about 60 rows: the table
    it leaves is the one merging everything at once (`merge.merge`) gives: repeats of stored events and of each
    other dropped, new ones added, in time order."""
    world = tmp_path / "world"
    simulate(world, customers=60, days=5, seed=4, progress=False, realism=Realism(recent_activity=False))
    settings = Settings(home=tmp_path / "home", ingest_bucket_rows=60)
    ingest(world, settings, progress=False)
    before = raw.load_table(settings, "email_events")
    assert before is not None and len(before) > 250
    columns = ["event_id", "customer_id", "message_id", "event"]
    repeats = [{**before.iloc[i][columns].to_dict(), "occurred_at": "2026-11-01T09:00:00Z"} for i in (0, 50)]
    new = [
        {"event_id": f"new-{i}", "customer_id": before["customer_id"].iloc[i], "message_id": "m-new", "event": "open"}
        for i in range(3)
    ]
    times = ["2026-10-01T00:00:00Z", "2030-01-01T00:00:00Z", str(before["occurred_at"].iloc[200].isoformat())]
    rows = [{**row, "table": "email_events"} for row in repeats]
    rows += [{**row, "occurred_at": time, "table": "email_events"} for row, time in zip(new, times, strict=True)]
    append_events(settings, check_events(rows[:3], settings))
    append_events(settings, check_events(rows[2:], settings))  # new-0 appended twice
    parts = pending_parts(settings)["email_events"]
    batch = Batch(contract.TABLES["email_events"], [], read_parts(parts), pd.DataFrame(), Counter(), 0, {}, 0)
    expected = merge(batch, before).frame
    assert merge_appended(settings) == {"email_events": 3}
    assert not pending_parts(settings)
    after = raw.load_table(settings, "email_events")
    assert after is not None and len(after) == len(before) + 3
    assert pq.ParquetFile(raw.table_path(settings, "email_events")).num_row_groups > 1, "written in pieces"
    expected.to_parquet(tmp_path / "expected.parquet", index=False)
    pd.testing.assert_frame_equal(after, pd.read_parquet(tmp_path / "expected.parquet"))


def whole_activity_offsets(activity: pd.DataFrame, known: pd.Series, candidates: pd.Index) -> pd.Series:
    """The offsets the inference from activity gave when it held all the activity at once (main's
    `timezones.best_offsets`, kept here as the reference)."""
    zones = activity["customer_id"].map(known)
    population = activity.loc[zones.notna()]
    local = timezones._local_hours(population["occurred_at"], zones.loc[population.index])
    density = np.bincount(local, minlength=24).astype(float) + 1.0
    log_density = np.log(density / density.sum())
    mine = activity.loc[activity["customer_id"].isin(candidates)]
    codes, customers = pd.factorize(mine["customer_id"])
    utc_hours = mine["occurred_at"].dt.hour.to_numpy()
    counts = np.bincount(codes * 24 + utc_hours, minlength=len(customers) * 24).reshape(-1, 24)
    enough = counts.sum(axis=1) >= timezones.MIN_ACTIVITY_EVENTS
    shifted = log_density[(np.arange(24)[:, None] + timezones.OFFSETS[None, :]) % 24]
    scores = counts[enough] @ shifted
    return pd.Series(timezones.OFFSETS[scores.argmax(axis=1)], index=customers[enough], dtype=np.int64)


def test_activity_hours_gathered_in_parts_infer_the_zones_the_whole_activity_did() -> None:
    """The time zones inferred from activity gathered a part at a time (as an ingest gathers it from the pieces
    of its event tables) are those inferring from all of it at once gave."""
    rng = np.random.default_rng(5)
    given = ["Europe/Berlin", "America/New_York", "Asia/Tokyo", "America/Los_Angeles"]
    customers = pd.DataFrame(
        {
            "customer_id": [f"c{i:03d}" for i in range(120)],
            "timezone": [given[i % 4] if i < 80 else None for i in range(120)],
            "country": None,
            "consent_profiling": [i % 10 != 9 for i in range(120)],
        }
    )
    offsets = {"Europe/Berlin": 1, "America/New_York": -5, "Asia/Tokyo": 9, "America/Los_Angeles": -8}
    rows = []
    for i, customer in enumerate(customers["customer_id"]):
        offset = offsets[given[i % 4]]  # the unknown ones live in the same zones
        for _ in range(int(rng.integers(3, 40))):
            local = int(rng.normal(19, 2.5)) % 24
            day = pd.Timestamp("2026-10-01", tz="UTC") + pd.Timedelta(days=int(rng.integers(0, 60)))
            rows.append((customer, day + pd.Timedelta(hours=(local - offset) % 24, minutes=int(rng.integers(60)))))
    activity = pd.DataFrame(rows, columns=["customer_id", "occurred_at"]).sample(frac=1, random_state=2)
    activity["occurred_at"] = activity["occurred_at"].astype("datetime64[us, UTC]")
    activity = activity.reset_index(drop=True)
    hours = timezones.ActivityHours(customers)
    for part in np.array_split(np.arange(len(activity)), 9):
        hours.add(activity.iloc[part])
    missing = customers["timezone"].isna()
    allowed = customers["consent_profiling"]
    known = pd.Series(customers.loc[~missing, "timezone"].to_numpy(), index=customers.loc[~missing, "customer_id"])
    candidates = pd.Index(customers.loc[missing & allowed, "customer_id"])
    expected = whole_activity_offsets(
        activity.loc[activity["customer_id"].isin(customers.loc[allowed, "customer_id"])], known, candidates
    )
    found, note = hours.best_offsets()
    assert note is None
    assert len(expected) > 20
    pd.testing.assert_series_equal(found, expected)
    in_parts, _ = timezones.infer_timezones(customers, hours)
    whole, _ = timezones.infer_timezones(customers, activity)
    pd.testing.assert_frame_equal(in_parts, whole)
    assert (in_parts["source"] == "activity").sum() == len(expected)


def test_a_spill_folder_a_killed_ingest_left_is_removed_and_a_running_ingests_kept(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    left = tmp_path / f"{PREFIX}killed{SUFFIX}"
    left.mkdir()
    (left / LOCK).touch()
    (left / "email_events.parquet").write_bytes(b"rows")
    with spill_folder(settings) as running:
        assert not left.exists(), "nobody holds its lock: a killed ingest left it"
        assert running.name.startswith(PREFIX) and running.name.endswith(SUFFIX)
        remove_stray_folders(tmp_path)  # another ingest starting meanwhile
        assert running.is_dir(), "its ingest holds the lock"
        with (running / LOCK).open("a") as handle, pytest.raises(BlockingIOError):
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    assert not running.exists()


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as folder:
        found = two_ingests(Path(folder))
    json.dump(found, sys.stdout, indent=4)
    print()
