"""What sendwise derives from email events: sends, machine and human opens, proxied recipients, the labels.

An open proves little. A privacy proxy (Apple Mail Privacy Protection) fetches every email its recipients get,
at delivery or hours later, and carries their own opens too, all under one generic user agent; security
scanners open, and follow links, seconds after delivery. The ESP flags part of these opens as machine opens,
but a `false` flag is not proof of a person. So sendwise reads the opens as channels:

- **Machine agents.** A user agent is a machine's when the ESP flags a good share of its opens (people's mail
  apps and browsers are never flagged, a proxy's or a scanner's are flagged whenever the ESP recognizes
  them), or when, for the recipients who have it, it opens nearly every email they are sent (no person opens
  nearly every email; a proxy does). Every open through a machine agent, and every flagged open, is a
  machine open; so is every click through one (scanners follow links).
- **Proxied recipients.** Some machine agents carry their recipients' own opens (a proxy in front of the
  mail app); others fetch beside them (a scanner: the person's own opens come from their mail app). The
  data tells which: the recipients an agent covers either read through agents of their own about as often
  as everyone else, or hardly ever. A recipient most of whose emails a carrying agent opened, and who (almost)
  never opened one through anything else, reads behind the proxy: their opens say nothing about whether or
  when they read. Their sends carry no open label; their clicks (made in a browser) still say they read. A
  recipient behind a fetching agent who never opens is a person who does not open: their sends keep their
  labels, so that leaving them out does not make everyone look keener than they are.

Labels, for the other recipients: a human open is an open that is not a machine open, within the label
window (72 hours by default) of the send; a click by a person also counts (it proves they read the email even
when the pixel was proxied or blocked). docs/features.md has the measurements.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

MACHINE_AGENT_FLAGGED_SHARE = 0.2
"""An agent the ESP flags on this share of its opens is a machine's: people's agents are flagged on almost none."""
MACHINE_AGENT_COVERAGE = 0.9
"""An agent that opens this share of the emails of its typical recipient is a machine's (no person opens all)."""
MIN_AGENT_OPENS = 20
MIN_AGENT_RECIPIENTS = 20
MIN_DELIVERIES = 3
"""Recipients with fewer delivered emails are not judged proxied: too little to go by."""
PROXIED_MACHINE_SHARE = 0.5
"""A proxied recipient's emails are (nearly) all opened by the proxy; at least this share, to be one."""
PROXIED_OWN_SHARE = 0.05
"""...and at most this share of them opened through anything but a machine agent."""
CARRIER_RATIO = 0.5
"""A machine agent carries its recipients' own opens when less than this share of them, relative to the
recipients no machine covers, open email through their own agents."""
NO_AGENT = ""


@dataclass
class Labels:
    """Every send with its labels, every open and click classified, and each recipient's proxy status."""

    sends: pd.DataFrame
    """One row per message: message_id, customer_id, campaign_id, send_at, decision_id, first_human_open_at,
    clicked (by a person), first_read_at (first human open or click), proxy_opened_at, human_open,
    proxied (the recipient's status: the label says nothing then)."""
    opens: pd.DataFrame
    """Every open with send_at, delay_s, flagged, is_machine, via_proxy (through a proxy agent)."""
    clicks: pd.DataFrame
    """Every click with is_machine."""
    recipients: pd.DataFrame
    """Per customer (index): deliveries, proxy_opened (emails opened through a proxy agent), own_opened (through
    their own agents), proxied."""
    machine_agents: set[str] = field(default_factory=set)
    proxy_agents: set[str] = field(default_factory=set)

    @property
    def proxied_customers(self) -> set[str]:
        return set(self.recipients.index[self.recipients["proxied"]])


def message_sends(email_events: pd.DataFrame) -> pd.DataFrame:
    """One row per message: who, which campaign, when it was sent (its `delivered` time where no `sent`)."""
    sends = email_events[email_events["event"].isin(["sent", "delivered"])]
    keys = pa.table(
        {
            "message_id": pa.array(sends["message_id"].to_numpy(dtype=object), pa.string()),
            "delivered": (sends["event"] != "sent").to_numpy(dtype=np.int8),
            "occurred_at": pa.array(sends["occurred_at"]),
        }
    )
    # Arrow sorts the ids (a stable sort, in the order of their characters as pandas does) many times faster.
    order = pc.sort_indices(keys, sort_keys=[(name, "ascending") for name in keys.column_names]).to_numpy()
    sends = sends.take(order)
    message = sends["message_id"].to_numpy(dtype=object)
    first_of_message = np.ones(len(message), dtype=bool)
    first_of_message[1:] = message[1:] != message[:-1]
    first = sends[first_of_message]
    columns = ["message_id", "customer_id", "campaign_id", "occurred_at", "decision_id"]
    table = first[[c for c in columns if c in first.columns]].rename(columns={"occurred_at": "send_at"})
    if "decision_id" not in table.columns:
        table["decision_id"] = None
    return table.reset_index(drop=True)


def _agents(events: pd.DataFrame) -> pd.Series:
    if "user_agent" not in events.columns:
        return pd.Series(NO_AGENT, index=events.index, dtype=object)
    return events["user_agent"].fillna(NO_AGENT).astype(str)


def _flags(opens: pd.DataFrame) -> pd.Series:
    if "machine_open" not in opens.columns:
        return pd.Series(False, index=opens.index)
    return opens["machine_open"].astype("boolean").fillna(False).astype(bool)


@dataclass
class AgentCounts:
    """What deciding the machine agents needs from the opens of some of the customers: summed over shares of
    the customers (`machine_agents_of`), it decides as the opens of all of them would."""

    flagged: pd.DataFrame
    """Per agent (index): `sum` of the opens the ESP flagged, `size` of all its opens."""
    coverage: pd.DataFrame
    """One row per (agent, recipient with enough deliveries): `agent`, `ratio` of the recipient's emails it opened."""


def agent_counts(opens: pd.DataFrame, delivered: pd.Series) -> AgentCounts:
    """The counts `machine_agents_of` decides on, from these opens; `delivered`: emails delivered per customer."""
    agent = _agents(opens)
    known = agent != NO_AGENT
    flagged = _flags(opens)[known].groupby(agent[known]).agg(["sum", "size"])
    pairs = opens.loc[known, ["customer_id", "message_id"]].assign(agent=agent[known]).drop_duplicates()
    per_recipient = pairs.groupby(["agent", "customer_id"]).size().rename("opened").reset_index()
    per_recipient["delivered"] = per_recipient["customer_id"].map(delivered).fillna(0)
    per_recipient = per_recipient[per_recipient["delivered"] >= MIN_DELIVERIES]
    ratio = per_recipient["opened"] / per_recipient["delivered"]
    return AgentCounts(flagged, pd.DataFrame({"agent": per_recipient["agent"], "ratio": ratio}))


def machine_agents_of(counts: list[AgentCounts]) -> set[str]:
    """User agents of machines: flagged by the ESP on a good share of their opens, or opening nearly every
    email of their typical recipient."""
    flagged = pd.concat([c.flagged for c in counts])
    if flagged.empty:
        return set()
    flagged = flagged.groupby(level=0).sum()
    share = flagged["sum"] / flagged["size"]
    found = set(flagged.index[(share >= MACHINE_AGENT_FLAGGED_SHARE) & (flagged["size"] >= MIN_AGENT_OPENS)])
    ratios = pd.concat([c.coverage for c in counts])
    coverage = ratios["ratio"].groupby(ratios["agent"]).agg(["median", "size"])
    found |= set(
        coverage.index[(coverage["median"] >= MACHINE_AGENT_COVERAGE) & (coverage["size"] >= MIN_AGENT_RECIPIENTS)]
    )
    return {str(agent) for agent in found}


def machine_agents(opens: pd.DataFrame, delivered: pd.Series) -> set[str]:
    """User agents of machines among these opens (`machine_agents_of`). `delivered`: emails delivered per
    customer."""
    return machine_agents_of([agent_counts(opens, delivered)])


def _delivered_messages(email_events: pd.DataFrame, sends: pd.DataFrame) -> pd.DataFrame:
    """The sends that were delivered: those with a `delivered` event, or every send where the export has none
    (an ESP that reports sends and bounces only), less the bounced ones."""
    event = email_events["event"]
    kept = ~sends["message_id"].isin(email_events.loc[event == "bounce", "message_id"])
    if (event == "delivered").any():
        kept &= sends["message_id"].isin(email_events.loc[event == "delivered", "message_id"])
    return sends[kept]


@dataclass
class OpenPairs:
    """What deciding the carrying agents needs of some customers' opens, compact enough to keep for every share
    of the customers until the machine agents are known: one row per (recipient, email, agent) opened, with
    whether the ESP flagged any and all of those opens; and the emails delivered per customer."""

    pairs: pd.DataFrame
    """`customer_id` (categorical), `message` (a number per email), `agent` (categorical), `any_flagged`,
    `all_flagged`."""
    delivered: pd.Series


def open_pairs(opens: pd.DataFrame, delivered: pd.Series) -> OpenPairs:
    """The `OpenPairs` of these opens; `delivered`: emails delivered per customer."""
    flagged = _flags(opens)
    keys = pd.DataFrame(
        {
            "customer_id": pd.Categorical(opens["customer_id"].astype(str)),
            "message": pd.factorize(opens["message_id"])[0].astype(np.int64),
            "agent": pd.Categorical(_agents(opens)),
            "flagged": flagged.to_numpy(),
        }
    )
    grouped = keys.groupby(["customer_id", "message", "agent"], observed=True, sort=False)["flagged"]
    pairs = grouped.agg(any_flagged="any", all_flagged="all").reset_index()
    return OpenPairs(pairs, delivered)


def carrier_counts(opened: OpenPairs, agents: set[str]) -> pd.DataFrame:
    """What deciding the carrying agents needs from some customers' opens, once the machine `agents` are known:
    one row per recipient with enough deliveries: `deliveries`, the machine `agent` that opened most of their
    emails, `covered` (how many it opened) and `own` (how many they opened through agents of their own).

    An email was opened by a machine agent when one of its opens came through a machine agent or was flagged,
    and by the recipient when one of them came through an agent of theirs unflagged (`classify_opens`)."""
    pairs = opened.pairs
    recipients = pd.DataFrame({"deliveries": opened.delivered.astype(np.float64)})
    machine_agent = pairs["agent"].astype(str).isin(agents).to_numpy()
    machine = pairs[machine_agent | pairs["any_flagged"].to_numpy()]
    by_agent = machine.groupby(["customer_id", "agent"], observed=True).size().rename("opened").reset_index()
    top = by_agent.sort_values("opened", ascending=False, kind="stable").drop_duplicates("customer_id")
    top = top.assign(customer_id=top["customer_id"].astype(str), agent=top["agent"].astype(str))
    recipients["agent"] = top.set_index("customer_id")["agent"]
    recipients["covered"] = top.set_index("customer_id")["opened"].reindex(recipients.index).fillna(0)
    own = pairs[~machine_agent & ~pairs["all_flagged"].to_numpy()].drop_duplicates(["customer_id", "message"])
    per_customer = own.groupby("customer_id", observed=True).size()
    per_customer.index = per_customer.index.astype(str)
    recipients["own"] = per_customer.reindex(recipients.index).fillna(0)
    return recipients[recipients["deliveries"] >= MIN_DELIVERIES]


def proxy_agents_of(counts: list[pd.DataFrame]) -> set[str]:
    """The machine agents that carry their recipients' own opens (a privacy proxy in front of their mail app),
    as opposed to those that only fetch beside them (a security scanner, or a proxy whose recipients' own opens
    come from their devices' agents), from `carrier_counts` of shares of the customers.

    Judged by the recipients each agent opens most emails of: if about as many of them open email through
    their own agents as the recipients no machine covers, the agent fetches beside them; if far fewer do, it
    carries their opens. An agent with too few such recipients to judge is taken to carry them (their opens
    are then not trusted as a person's).
    """
    recipients = pd.concat(counts)
    if recipients["agent"].isna().all():
        return set()
    reads_own = recipients["own"] / recipients["deliveries"] >= PROXIED_OWN_SHARE
    covered = recipients["covered"] / recipients["deliveries"] >= PROXIED_MACHINE_SHARE
    baseline = float(reads_own[~covered].mean()) if (~covered).sum() >= MIN_AGENT_RECIPIENTS else 1.0
    found = set()
    for agent, members in recipients[covered].groupby("agent").groups.items():
        if len(members) < MIN_AGENT_RECIPIENTS or reads_own[members].mean() < CARRIER_RATIO * baseline:
            found.add(str(agent))
    return found


def proxy_agents(opens: pd.DataFrame, delivered: pd.Series, agents: set[str]) -> set[str]:
    """The carrying agents among these opens, classified by the machine `agents` (`proxy_agents_of`)."""
    if not opens["is_machine"].any():
        return set()
    return proxy_agents_of([carrier_counts(open_pairs(opens, delivered), agents)])


@dataclass
class Prepared:
    """The sends, the delivered emails per customer and the opens (with their send times) of some email events:
    what deciding the agents and labelling start from."""

    sends: pd.DataFrame
    delivered: pd.Series
    opens: pd.DataFrame


def prepare(email_events: pd.DataFrame) -> Prepared:
    sends = message_sends(email_events)
    send_at = sends.set_index("message_id")["send_at"]
    per_customer = _delivered_messages(email_events, sends).groupby("customer_id").size()
    opens = email_events[email_events["event"] == "open"].copy()
    opens["send_at"] = opens["message_id"].map(send_at)
    opens["delay_s"] = (opens["occurred_at"] - opens["send_at"]).dt.total_seconds()
    opens["flagged"] = _flags(opens)
    return Prepared(sends, per_customer, opens)


def classify_opens(opens: pd.DataFrame, agents: set[str]) -> None:
    """Mark each open a machine's (`is_machine`): flagged by the ESP, or through a machine agent."""
    opens["is_machine"] = opens["flagged"] | _agents(opens).isin(agents)


def label_sends(
    email_events: pd.DataFrame,
    label_hours: int = 72,
    agents: set[str] | None = None,
    carriers: set[str] | None = None,
) -> Labels:
    """Sends with their labels, the opens and clicks classified, and the recipients' proxy status.

    The machine `agents` and the proxies among them that carry their recipients' opens (`carriers`) are
    decided from these events unless given: given, they were decided on more customers than these events have
    (`machine_agents_of`, `proxy_agents_of` over shares of the customers) and every share is labelled alike."""
    prepared = prepare(email_events)
    sends, per_customer, opens = prepared.sends, prepared.delivered, prepared.opens
    if agents is None:
        agents = machine_agents(opens, per_customer)
    classify_opens(opens, agents)
    clicks = email_events[email_events["event"] == "click"].copy()
    clicks["is_machine"] = _agents(clicks).isin(agents)

    if carriers is None:
        carriers = proxy_agents(opens, per_customer, agents)
    opens["via_proxy"] = opens["is_machine"] & _agents(opens).isin(carriers)
    recipients = _recipients(opens, per_customer)
    window_s = pd.Timedelta(hours=label_hours).total_seconds()
    human = opens[~opens["is_machine"] & (opens["delay_s"] >= 0) & (opens["delay_s"] <= window_s)]
    first_open = human.groupby("message_id")["occurred_at"].min()
    person_clicks = clicks[~clicks["is_machine"]]
    first_click = person_clicks.groupby("message_id")["occurred_at"].min()
    proxy = opens[opens["via_proxy"]].groupby("message_id")["occurred_at"].min()
    sends["first_human_open_at"] = sends["message_id"].map(first_open)
    # A click by a person proves they read the email even when the open pixel was blocked or proxied.
    sends["clicked"] = sends["message_id"].isin(set(person_clicks["message_id"]))
    sends["first_read_at"] = pd.concat(
        [sends["first_human_open_at"], sends["message_id"].map(first_click)], axis=1
    ).min(axis=1)
    sends["proxy_opened_at"] = sends["message_id"].map(proxy)
    sends["human_open"] = sends["first_human_open_at"].notna() | sends["clicked"]
    sends["proxied"] = sends["customer_id"].isin(set(recipients.index[recipients["proxied"]]))
    return Labels(sends, opens, clicks, recipients, machine_agents=agents, proxy_agents=carriers)


def _recipients(opens: pd.DataFrame, delivered: pd.Series) -> pd.DataFrame:
    """Per customer with a delivered email: how many were opened through a proxy and by their own agents."""
    proxy = opens.loc[opens["via_proxy"], ["customer_id", "message_id"]].drop_duplicates()
    own = opens.loc[~opens["is_machine"], ["customer_id", "message_id"]].drop_duplicates()
    table = pd.DataFrame({"deliveries": delivered.astype(np.int64)})
    table["proxy_opened"] = proxy.groupby("customer_id").size().reindex(table.index).fillna(0).astype(np.int64)
    table["own_opened"] = own.groupby("customer_id").size().reindex(table.index).fillna(0).astype(np.int64)
    table["proxied"] = is_proxied(table["deliveries"], table["proxy_opened"], table["own_opened"])
    table.index.name = "customer_id"
    return table


def is_proxied(
    deliveries: pd.Series | np.ndarray, proxy_opened: pd.Series | np.ndarray, own_opened: pd.Series | np.ndarray
) -> np.ndarray:
    """Whether recipients read behind a privacy proxy: enough emails, most opened by a proxy agent, (almost)
    none through their own agents. Works on counts or on decayed counts alike."""
    deliveries = np.asarray(deliveries, dtype=np.float64)
    enough = deliveries >= MIN_DELIVERIES
    base = np.maximum(deliveries, 1e-9)
    machine = np.asarray(proxy_opened, dtype=np.float64) / base
    own = np.asarray(own_opened, dtype=np.float64) / base
    return enough & (machine >= PROXIED_MACHINE_SHARE) & (own < PROXIED_OWN_SHARE)
