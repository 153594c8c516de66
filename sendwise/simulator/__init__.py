"""The simulator: a world in the data contract, with the ground truth that made it (`sendwise simulate`).

The world's customers, offers and true probabilities are a `World` (`truth`); every open, session and
conversion is drawn from that World's functions, so the truth in `OUT_DIR/truth/` is the truth of the data.
docs/simulator.md describes the model. The parts, each changing for a reason of its own:

- `options`: the rates of the mechanics and the realism of a world (`sendwise simulate`'s flags);
- `truth`: the ground truth (`World`), and `families`: the daily-rhythm families;
- `population`: the customers and their parameters; `sender`: the offers, the campaigns, the logging policy;
- `run` (with `site`): the hour-by-hour run, recorded as rows of codes (`records`);
- `dirt`: the deliberate dirt of the exports; `export`: the files of the data contract and of the truth;
- `simulation`: `simulate`, which draws the parts in order from one seed.
"""

from sendwise.simulator.dirt import EMAIL_ALIASES
from sendwise.simulator.options import REALISTIC_RATES, Rates, Realism, simulation_options
from sendwise.simulator.population import interest_matrix
from sendwise.simulator.records import DEVICE_USER_AGENTS, MPP_USER_AGENT
from sendwise.simulator.sender import BLAST_HOUR_UTC, LoggedPolicy, OfferMenu
from sendwise.simulator.simulation import SimulationSummary, simulate
from sendwise.simulator.truth import World

__all__ = [
    "BLAST_HOUR_UTC",
    "DEVICE_USER_AGENTS",
    "EMAIL_ALIASES",
    "MPP_USER_AGENT",
    "REALISTIC_RATES",
    "LoggedPolicy",
    "OfferMenu",
    "Rates",
    "Realism",
    "SimulationSummary",
    "World",
    "interest_matrix",
    "simulate",
    "simulation_options",
]
