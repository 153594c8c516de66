"""The send-time section: the local hours sendwise would send at, against the hours the data shows were used.

sendwise's hour is each recipient's best hour of the send-time champion's curve over the 24 hours after the
data's end (`training.reporting.audience`); the hours used are the local hours of the sends in the raw store,
each in its customer's time zone. The expected lift compares, for the recipients who were sent email before,
the mean predicted open probability at sendwise's hour with the mean at the local hours their past emails went
out (same customers, same model, same day; each customer's past hours weighted by how often they were used).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from features.localtime import local_hour_weekday
from training.reporting.audience import Audience
from training.reporting.inputs import NO_AUDIENCE, ReportInputs
from training.reporting.plots import hours_chart
from training.reporting.site import PLOTS, Section, percent, points

HOURS = 24


@dataclass(frozen=True)
class LoggedHours:
    """The sends of the raw store by local hour: each send in its customer's time zone."""

    customer_id: np.ndarray  # kept in memory for the join with the recipients; never written
    local_hour: np.ndarray
    first: pd.Timestamp
    last: pd.Timestamp

    def shares(self) -> np.ndarray:
        return np.bincount(self.local_hour, minlength=HOURS) / max(len(self.local_hour), 1)


@dataclass(frozen=True)
class Lift:
    """Mean predicted open probability at sendwise's hour and at the hours used, over the same recipients."""

    recipients: int
    sends: int
    at_sendwise: float
    at_used: float

    @property
    def points(self) -> float:
        return self.at_sendwise - self.at_used

    @property
    def relative(self) -> float:
        return self.at_sendwise / self.at_used - 1 if self.at_used > 0 else float("nan")


def logged_hours(inputs: ReportInputs) -> LoggedHours | None:
    """The raw store's sends in local time (None where it has none)."""
    customers = inputs.table("customers")
    sends = inputs.sends
    if sends is None or customers is None:
        return None
    zones = sends["customer_id"].map(customers.drop_duplicates("customer_id").set_index("customer_id")["timezone"])
    sends = sends[zones.notna()].reset_index(drop=True)
    if sends.empty:
        return None
    hour, _ = local_hour_weekday(sends["send_at"], zones[zones.notna()].reset_index(drop=True))
    return LoggedHours(
        customer_id=sends["customer_id"].to_numpy(dtype=object),
        local_hour=np.asarray(hour, dtype=np.int64),
        first=sends["send_at"].min(),
        last=sends["send_at"].max(),
    )


def expected_lift(audience: Audience, used: LoggedHours) -> Lift | None:
    """sendwise's hour against the hours used, over the recipients with at least one send in the data."""
    position = pd.Index(audience.ids).get_indexer(used.customer_id)
    mine = position >= 0
    if not mine.any():
        return None
    counts = np.zeros((len(audience), HOURS))
    np.add.at(counts, (position[mine], used.local_hour[mine]), 1.0)
    sent = counts.sum(axis=1) > 0
    at_hours = audience.probability_at_local_hours()
    at_used = (counts[sent] * at_hours[sent]).sum(axis=1) / counts[sent].sum(axis=1)
    return Lift(
        recipients=int(sent.sum()),
        sends=int(mine.sum()),
        at_sendwise=float(audience.best_probability[sent].mean()),
        at_used=float(at_used.mean()),
    )


def send_time_section(inputs: ReportInputs) -> Section | None:
    if not inputs.explains("send_time", "open_propensity"):
        return None
    audience = inputs.audience
    if audience is None or len(audience) == 0:
        return Section.unavailable("send-time", "Send time", NO_AUDIENCE)
    inputs.status("comparing send hours")
    sendwise = np.bincount(audience.best_local_hour, minlength=HOURS) / len(audience)
    used = logged_hours(inputs)
    lift = expected_lift(audience, used) if used is not None else None
    chart = hours_chart(inputs.plots_dir / "send-time-hours.png", sendwise, used.shares() if used else None)
    peak = int(np.argmax(sendwise))
    summary = [f"sendwise would send most emails at {peak:02d}:00 local time ({percent(float(sendwise[peak]))})."]
    if used is not None:
        busiest = int(np.argmax(used.shares()))
        summary.append(f"The data's sends went out most at {busiest:02d}:00 local time.")
    if lift is not None:
        summary.append(
            f"Expected opens at sendwise's hour: {percent(lift.at_sendwise)} against {percent(lift.at_used)} at the "
            f"hours used ({points(lift.points)}), for the {lift.recipients:,} recipients emailed before."
        )
    return Section(
        slug="send-time",
        title="Send time",
        summary=summary,
        template="send_time.html.j2",
        context={
            "recipients": len(audience),
            "sendwise_share": sendwise.tolist(),
            "used_share": used.shares().tolist() if used is not None else None,
            "used": used,
            "lift": lift,
            "chart": f"{PLOTS}/{chart.name}",
            "start": audience.start,
        },
        images=[f"{PLOTS}/{chart.name}"],
    )
