"""The bulk path: a file of recipients in, a file of decisions out, through the real CLI and engine."""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path

import orjson
import pandas as pd
import pytest
from typer.testing import CliRunner

from sendwise.raw import load_table
from tests.conftest import home_with_own_decision_log

pytestmark = [pytest.mark.integration]
WINDOW = "2026-12-01T07:00:00Z"


@pytest.fixture(scope="module")
def known(pipeline_home) -> list[str]:  # type: ignore[no-untyped-def]
    customers = load_table(pipeline_home.settings, "customers")
    assert customers is not None
    return customers.loc[customers["consent_email"], "customer_id"].head(250).tolist()


def _run(home: Path, *args: str):  # type: ignore[no-untyped-def]
    """`sendwise decide ARGS` in `home` (a copy of the pipeline's, with a decision log of the test's own)."""
    from sendwise.cli import app

    env = {"SENDWISE_HOME": str(home), "MLFLOW_DISABLE_TELEMETRY": "true"}
    return CliRunner().invoke(app, ["decide", *args], env=env)


def _logged(decisions_dir: Path) -> list[dict]:
    """Every entry of a home's decision log."""
    lines = [line for path in sorted(decisions_dir.glob("*.jsonl")) for line in path.read_bytes().splitlines()]
    return [orjson.loads(line) for line in lines]


def test_a_campaign_file_is_decided_in_batches_in_input_order(pipeline_home, known, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    settings = home_with_own_decision_log(pipeline_home.settings, tmp_path / "own-home")
    frame = pd.DataFrame({"customer_id": known, "timezone": "", "interests": ""})
    frame.loc[len(frame)] = ["new-1", "Asia/Tokyo", "books|outdoor"]
    source = tmp_path / "campaign.csv"
    frame.to_csv(source, sep=";", index=False)
    request = tmp_path / "request.json"
    request.write_text(
        '{"campaign": {"kind": "promotional"}, "k_offers": 2, "constraints": {"max_share_per_hour": 0.2}}'
    )
    out = tmp_path / "out" / "decisions.jsonl"
    result = _run(settings.home, str(source), "--out", str(out), "--request", str(request), "--window-start", WINDOW)
    assert result.exit_code == 0, result.output
    lines = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    assert [d["customer_id"] for d in lines] == [*known, "new-1"]
    assert len({d["decision_id"] for d in lines}) == len(lines)
    sent = [d for d in lines if d["send"]]
    assert len(sent) > 0.8 * len(lines)
    assert all(d["send_at"].startswith("2026-12-0") and len(d["offers"]) <= 2 for d in sent)
    per_hour = pd.Series([d["send_at"] for d in sent]).value_counts()
    assert per_hour.max() <= -(-0.2 * len(sent) // 1)  # the cap is a share of the batch
    assert lines[-1]["cold_start"] and "Asia/Tokyo" in lines[-1]["reasons"][0]
    assert f"{len(lines):,} decisions ({len(sent):,} sends) in 1 batches" in " ".join(result.output.split())
    assert not list(out.parent.glob("*.partial*"))
    logged = _logged(settings.decisions_dir)  # every decision, and nothing else, in the home's log
    assert len(logged) == len(lines)
    assert {e["decision_id"]: e["send"] for e in logged} == {d["decision_id"]: d["send"] for d in lines}


def test_a_bad_row_is_named_and_nothing_is_written(pipeline_home, known, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    settings = home_with_own_decision_log(pipeline_home.settings, tmp_path / "own-home")
    source = tmp_path / "campaign.jsonl"
    rows = [{"customer_id": known[0]}, {"customer_id": known[1], "timezone": "Mars/Olympus"}]
    source.write_bytes(b"\n".join(orjson.dumps(r) for r in rows))
    out = tmp_path / "decisions.jsonl"
    result = _run(settings.home, str(source), "--out", str(out), "--window-start", WINDOW)
    said = " ".join(result.output.split())  # the console wraps long lines
    assert result.exit_code == 2
    assert "line 2" in said and "timezone" in said and "Mars/Olympus" in said
    assert not out.exists() and not list(tmp_path.glob("*.partial*"))
    missing = tmp_path / "ids.csv"
    missing.write_text("id\nc-1\n")
    result = _run(settings.home, str(missing), "--out", str(out))
    assert result.exit_code == 2 and "no customer_id column (columns: id)" in " ".join(result.output.split())
    result = _run(settings.home, str(source), "--out", str(out), "--window-start", "2026-12-01T07:30:00Z")
    assert result.exit_code == 2 and "window_start must be a whole hour" in " ".join(result.output.split())
    assert _logged(settings.decisions_dir) == []  # nothing decided


def test_json_lines_split_one_encoding_into_one_object_per_line() -> None:
    import orjson

    from serving.decision_log import json_lines

    tricky = 'c-1"},{"customer_id":"x\n'  # the separator inside a string: escaped there, so not split
    records = [
        {"customer_id": tricky, "offers": [{"offer_id": "of-1"}, {"offer_id": "of-2"}], "reasons": ["a", "b"]},
        {"customer_id": "c-2", "nested": {"customer_id": "inner"}, "reasons": []},
        {"customer_id": "c-3", "list": [{"customer_id": "first key again"}, {"customer_id": "and again"}]},
    ]
    for part in (records[:2], records, records[:1], []):
        encoded = json_lines(part, "customer_id")
        assert [orjson.loads(line) for line in encoded.splitlines()] == part
        assert encoded.count(b"\n") == len(part)


def test_recipients_carry_only_the_context_the_file_has(tmp_path: Path) -> None:
    from serving.bulk import read_recipients

    source = tmp_path / "recipients.parquet"
    pd.DataFrame(
        {
            "customer_id": ["c-1", "new-2", "new-3"],
            "timezone": [None, "Asia/Tokyo", ""],
            "interests": [None, "books| outdoor", ""],
            "attr_loyalty_tier": ["gold", None, "basic"],
            "attr_age": [31.0, float("nan"), 40.0],
        }
    ).to_parquet(source)
    first, second, third = read_recipients(source)
    assert (first.customer_id, first.timezone, first.interests) == ("c-1", None, [])
    assert first.attributes == {"attr_loyalty_tier": "gold", "attr_age": 31.0}
    assert (second.timezone, second.interests, second.attributes) == ("Asia/Tokyo", ["books", "outdoor"], {})
    assert third.attributes == {"attr_loyalty_tier": "basic", "attr_age": 40.0} and third.timezone is None
    ids_only = tmp_path / "ids.csv"
    ids_only.write_text("customer_id\n c-9 \n")
    (only,) = read_recipients(ids_only)
    assert (only.customer_id, only.timezone, only.attributes) == ("c-9", None, {})  # stripped, defaults


def _request(explore_share: float):  # type: ignore[no-untyped-def]
    from serving.schemas import DecideRequest

    body = {"recipients": [{"customer_id": "t"}], "window_start": WINDOW, "k_offers": 3, "explore_share": explore_share}
    return DecideRequest.model_validate(body)


def _recipients(known: list[str]):  # type: ignore[no-untyped-def]
    from serving.schemas import Recipient

    return [Recipient(customer_id=c) for c in known] + [Recipient(customer_id="new-2", timezone="Europe/Paris")]


def _logged_ids(engine) -> list[str]:  # type: ignore[no-untyped-def]
    return [entry["decision_id"] for entry in _logged(engine.settings.decisions_dir)]


def test_worker_processes_decide_what_one_process_decides(engine, known, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from serving.bulk import decide_all

    recipients = _recipients(known)
    assert _logged_ids(engine) == []  # the test's own log
    one = decide_all(engine, recipients, tmp_path / "one.jsonl", _request(0.0), batch_size=40, processes=1)
    two = decide_all(engine, recipients, tmp_path / "two.jsonl", _request(0.0), batch_size=40, processes=2)
    assert one.batches == two.batches == 7  # 40 first, in this process, then 211 in 6 batches of at most 40
    assert (two.recipients, two.sent, two.status) == (one.recipients, one.sent, one.status)
    alone, forked = (
        [orjson.loads(line) for line in (tmp_path / name).read_bytes().splitlines()]
        for name in ("one.jsonl", "two.jsonl")
    )
    assert [d["customer_id"] for d in forked] == [r.customer_id for r in recipients]
    ids = [d.pop("decision_id") for d in forked] + [d.pop("decision_id") for d in alone]
    assert forked == alone  # the same hours, probabilities, offers, modules and reasons
    assert sorted(_logged_ids(engine)) == sorted(ids) and len(set(ids)) == len(ids)  # every worker's reached it


def test_each_worker_process_draws_its_own_explorations(engine, known, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from serving.bulk import _ranges, decide_all

    out = tmp_path / "explored.jsonl"
    decide_all(engine, _recipients(known), out, _request(0.5), batch_size=40, processes=2)
    explored = [orjson.loads(line)["explore"] for line in out.read_bytes().splitlines()]
    batches = [tuple(explored[first:last]) for first, last in _ranges(len(explored), 40, 2)[1:]]  # the workers''
    assert 0.3 < sum(explored) / len(explored) < 0.7
    assert len(set(batches)) == len(batches)  # forked with the parent's random state, they would repeat


def test_a_failing_worker_stops_the_job_and_nothing_is_written(  # type: ignore[no-untyped-def]
    engine, known, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    from serving.bulk import BulkError, decide_all

    parent, decide = os.getpid(), engine.decide_payload
    recipients = _recipients(known)

    def failing(request):  # type: ignore[no-untyped-def]
        ids = {r.customer_id for r in request.recipients}
        if known[100] in ids and os.getpid() != parent:
            raise ValueError(f"the offer table went away while deciding {known[100]}")
        if known[200] in ids and os.getpid() != parent:
            os._exit(3)  # a worker killed outright, as the kernel's OOM killer would
        return decide(request)

    monkeypatch.setattr(engine, "decide_payload", failing)  # the workers fork with it
    out = tmp_path / "decisions.jsonl"
    with pytest.raises(ValueError, match=f"went away while deciding {known[100]}"):
        decide_all(engine, recipients[:150], out, _request(0.0), batch_size=40, processes=2)
    assert not out.exists() and not list(tmp_path.glob("*.partial*"))
    with pytest.raises(BulkError, match="a worker process of the bulk job died"):
        decide_all(engine, recipients[150:], out, _request(0.0), batch_size=40, processes=2)
    assert not out.exists() and not list(tmp_path.glob("*.partial*"))
    monkeypatch.undo()
    summary = decide_all(engine, recipients, out, _request(0.0), batch_size=40, processes=2)  # and it recovers
    assert summary.recipients == len(out.read_bytes().splitlines()) == len(recipients)


def test_batches_cover_every_recipient_once_and_split_evenly_among_workers() -> None:
    from serving.bulk import WARM_RECIPIENTS, _ranges

    for total, size, workers in [(91_371, 5_000, 2), (251, 40, 2), (251, 40, 3), (1_001, 1_000, 2), (7, 40, 2)]:
        ranges = _ranges(total, size, workers)
        assert ranges[0] == (0, min(WARM_RECIPIENTS, size, total)) and ranges[-1][1] == total
        assert all(a == b for (_, a), (b, _) in pairwise(ranges))  # contiguous, in order
        sizes = [b - a for a, b in ranges[1:]]
        assert all(0 < s <= size for s in sizes) and max(sizes, default=0) - min(sizes, default=0) <= 1
        assert len(sizes) <= 1 or len(sizes) % workers == 0
    assert len(_ranges(91_371, 5_000, 2)) == 1 + 20  # 90,371 after the first batch: 19 would do, 20 split evenly


def test_parts_are_appended_whole_with_or_without_copy_file_range(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    from serving.bulk import _append

    def unsupported(*args: object) -> int:
        raise OSError(95, "Operation not supported")

    for patch in (False, True):
        if patch:
            monkeypatch.setattr(os, "copy_file_range", unsupported)
        out = tmp_path / f"out-{patch}.jsonl"
        with out.open("wb") as sink:
            sink.write(b"first\n")
            for k, body in enumerate((b'{"a": 1}\n' * 5000, b"", b'{"b": 2}\n')):
                part = tmp_path / f"part-{k}"
                part.write_bytes(body)
                _append(sink, part)
                assert not part.exists()
            sink.write(b"last\n")
        assert out.read_bytes() == b"first\n" + b'{"a": 1}\n' * 5000 + b'{"b": 2}\n' + b"last\n"
