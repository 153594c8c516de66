"""Machine opens, proxied recipients and labels, on hand-made events whose every answer is known."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from features.labels import (
    MIN_AGENT_RECIPIENTS,
    is_proxied,
    label_sends,
    machine_agents,
)

T0 = pd.Timestamp("2026-10-01T14:00:00Z")
PHONE = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X)"
DESKTOP = "Microsoft Office/16.0 (Windows NT 10.0; Microsoft Outlook 16.0.17628; Pro)"
PROXY = "Mozilla/5.0"
SCANNER = "Mimecast-Security-Scanner/2.1"


class Events:
    """Email events written one email at a time."""

    def __init__(self) -> None:
        self.rows: list[dict[str, object]] = []
        self.messages = 0

    def email(self, customer: str, day: int, *, opens: list[tuple[float, str, bool | None]] = (), clicks=()) -> str:  # type: ignore[assignment]
        """An email sent `day` days after T0 and delivered; `opens`: (hours after the send, agent, ESP flag)."""
        self.messages += 1
        message = f"m-{self.messages}"
        sent = T0 + pd.Timedelta(days=day)
        self.add(customer, message, "sent", sent)
        self.add(customer, message, "delivered", sent + pd.Timedelta(seconds=5))
        for hours, agent, flag in opens:
            self.add(customer, message, "open", sent + pd.Timedelta(hours=hours), agent=agent, flag=flag)
        for hours, agent in clicks:
            self.add(customer, message, "click", sent + pd.Timedelta(hours=hours), agent=agent)
        return message

    def add(self, customer: str, message: str, event: str, at: pd.Timestamp, agent=None, flag=None) -> None:  # type: ignore[no-untyped-def]
        self.rows.append(
            {
                "event_id": f"e-{len(self.rows)}",
                "customer_id": customer,
                "message_id": message,
                "campaign_id": "cmp-1",
                "event": event,
                "occurred_at": at,
                "machine_open": flag,
                "user_agent": agent,
            }
        )

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows)


@pytest.fixture
def world() -> Events:
    """Proxied recipients (every email fetched by the proxy, their own reads through it too), people who open
    on their own devices, scanned business recipients, and someone with too few emails to judge."""
    rng = np.random.default_rng(0)
    events = Events()
    for c in range(30):  # proxied: the proxy fetches everything, flagged 60% of the time; their opens too
        for day in range(6):
            opens = [(rng.uniform(0, 8), PROXY, bool(rng.random() < 0.6))]
            clicks = []
            if rng.random() < 0.3:
                opens.append((rng.uniform(1, 20), PROXY, bool(rng.random() < 0.6)))
                clicks = [(21.0, PHONE)] if rng.random() < 0.5 else []
            events.email(f"proxied-{c}", day, opens=opens, clicks=clicks)
    for c in range(30):  # people: a third of their emails, on their own devices, never flagged
        for day in range(6):
            opened = rng.random() < 0.35
            agent = PHONE if c % 2 else DESKTOP
            events.email(f"person-{c}", day, opens=[(rng.uniform(1, 30), agent, False)] if opened else [])
    for c in range(24):  # scanned: the scanner opens and clicks every email in seconds; most people open some
        for day in range(6):
            opens = [(0.001, SCANNER, bool(rng.random() < 0.5))]
            if c < 20 and rng.random() < 0.5:
                opens.append((rng.uniform(1, 30), DESKTOP, None))
            events.email(f"scanned-{c}", day, opens=opens, clicks=[(0.002, SCANNER)])
    events.email("newcomer", 0, opens=[(0.1, PROXY, True)])
    return events


def test_machine_agents_are_the_flagged_ones_and_people_agents_are_not(world: Events) -> None:
    labels = label_sends(world.frame())
    assert labels.machine_agents == {PROXY, SCANNER}
    opens = labels.opens
    assert opens.loc[opens["user_agent"].isin([PROXY, SCANNER]), "is_machine"].all()
    assert not opens.loc[opens["user_agent"].isin([PHONE, DESKTOP]), "is_machine"].any()
    clicks = labels.clicks.set_index("user_agent")["is_machine"]
    assert clicks.loc[[SCANNER]].all() and not clicks.loc[[PHONE]].any()


def test_an_agent_that_opens_every_email_is_a_machine_even_unflagged(world: Events) -> None:
    """An ESP that flags nothing: the proxy still opens nearly every email of its recipients; no person does."""
    frame = world.frame().assign(machine_open=None)
    opens = frame[frame["event"] == "open"]
    delivered = frame[frame["event"] == "delivered"].groupby("customer_id").size()
    assert machine_agents(opens, delivered) == {PROXY, SCANNER}
    people = opens[opens["customer_id"].str.startswith("person")]
    assert machine_agents(people, delivered) == set()
    few = opens[~opens["customer_id"].str.startswith("scanned-1")]  # the scanner now covers 13 recipients
    assert machine_agents(few, delivered) == {PROXY} and MIN_AGENT_RECIPIENTS > 13


def test_proxied_recipients_are_found_and_scanned_ones_are_not(world: Events) -> None:
    recipients = label_sends(world.frame()).recipients
    proxied = recipients["proxied"]
    assert proxied[proxied.index.str.startswith("proxied")].all()
    assert not proxied[proxied.index.str.startswith("person")].any()
    # The scanner fetches beside its recipients (most of them open through their own mail app): those who never
    # open are people who do not open, not proxied ones. The proxy carries its recipients' opens.
    assert not proxied[proxied.index.str.startswith("scanned")].any()
    assert label_sends(world.frame()).proxy_agents == {PROXY}
    assert not proxied["newcomer"]  # one email is too few to judge
    assert recipients.loc["proxied-0", "deliveries"] == 6 and recipients.loc["proxied-0", "proxy_opened"] == 6


def test_labels_count_people_only(world: Events) -> None:
    sends = label_sends(world.frame()).sends.set_index("message_id")
    by_customer = sends.groupby("customer_id")
    # Proxied: no open of theirs is a label, but a click in their browser is a person reading.
    proxied = sends[sends["customer_id"].str.startswith("proxied")]
    assert proxied["proxied"].all()
    assert (proxied["human_open"] == proxied["clicked"]).all() and proxied["clicked"].any()
    assert proxied["first_human_open_at"].isna().all()
    assert (proxied.loc[proxied["clicked"], "first_read_at"] == proxied.loc[proxied["clicked"], "first_read_at"]).all()
    # Scanned: the scanner's open and click are not the person's; their own opens are.
    scanned = sends[sends["customer_id"].str.startswith("scanned")]
    assert not scanned["clicked"].any()
    assert scanned["proxy_opened_at"].isna().all() and not scanned["proxied"].any()
    assert scanned["human_open"].sum() == scanned["first_human_open_at"].notna().sum() > 0
    people = by_customer["human_open"].mean().filter(like="person")
    assert 0.2 < people.mean() < 0.5


def test_a_read_outside_the_label_window_is_no_label() -> None:
    events = Events()
    early = events.email("a", 0, opens=[(71.0, PHONE, False)])
    late = events.email("a", 1, opens=[(73.0, PHONE, False)])
    sends = label_sends(events.frame(), label_hours=72).sends.set_index("message_id")
    assert sends.loc[early, "human_open"] and not sends.loc[late, "human_open"]


def test_is_proxied_on_counts_and_decayed_counts() -> None:
    deliveries = np.array([10, 10, 10, 2, 4.5])
    machine = np.array([10, 9.6, 4, 2, 4.5])
    own = np.array([0, 1, 0, 0, 0.1])
    assert is_proxied(deliveries, machine, own).tolist() == [True, False, False, False, True]


def test_too_few_recipients_to_judge_an_agent_by_are_taken_as_carried(world: Events) -> None:
    """Below 20 recipients an agent's kind cannot be told: their opens are not trusted as a person's."""
    frame = world.frame()
    few = frame[~frame["customer_id"].str.startswith("scanned-1")]
    labels = label_sends(few)
    assert labels.proxy_agents == {PROXY, SCANNER}
    recipients = labels.recipients[labels.recipients.index.str.startswith("scanned")]
    assert (recipients["proxied"] == (recipients["own_opened"] == 0)).all()
    assert recipients.loc["scanned-20", "proxied"]  # never opened on their own
