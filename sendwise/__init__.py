"""sendwise: open propensity, send time and next best offer for personalized email."""

import zoneinfo

# One time-zone database everywhere: the `tzdata` package pinned in uv.lock, which pandas (through pytz, from
# the same release) also follows, not whatever the operating system has. Otherwise a zone whose rules
# changed recently (British Columbia keeps daylight time from 2026) has two different clocks in one process.
zoneinfo.reset_tzpath(to=[])
