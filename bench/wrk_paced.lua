-- wrk script for bench/wrk.py's paced runs (the soak): bench/wrk.lua, with requests sent on a fixed schedule,
-- one every 1/rate seconds across the connections, instead of each connection sending its next request as soon
-- as its last answer is read. A script of its own because wrk runs every request through a timer once a script
-- defines `delay`, which the closed-loop runs must not pay for.
-- Arguments (after `--`): bodies file, path, bearer token, rate (requests per second).

local here = debug.getinfo(1, "S").source:sub(2):match("(.*/)") or "./"
dofile(here .. "wrk.lua")

local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int clock, bench_timespec *at);
]]
local clock_ = ffi.new("bench_timespec")

local function monotonic_s()
  ffi.C.clock_gettime(1, clock_) -- CLOCK_MONOTONIC
  return tonumber(clock_.tv_sec) + tonumber(clock_.tv_nsec) * 1e-9
end

local closed_loop_init = init

function init(args)
  closed_loop_init(args)
  local rate = tonumber(args[4])
  if rate == nil or rate <= 0 then
    error("the fourth argument must be a rate in requests per second, not " .. tostring(args[4]))
  end
  interval_ = 1 / rate
  slot_ = nil
end

function delay()
  -- the milliseconds until this request's slot on the schedule; a schedule more than a second behind (the
  -- service stalled) starts again from now rather than sending the backlog at once
  local now = monotonic_s()
  if slot_ == nil or slot_ < now - 1 then slot_ = now end
  slot_ = slot_ + interval_
  local wait_ms = (slot_ - now) * 1000
  if wait_ms < 0 then return 0 end
  return wait_ms
end
