-- wrk script for bench/wrk.py: POST each body of a file (one JSON per line) in turn to `path`, check every
-- answer, and print what was measured as one JSON line prefixed by "BENCH_RESULT ".
-- Arguments (after `--`): bodies file, path, bearer token. `bench/wrk_paced.lua` adds a rate to them.

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  local bodies_file, path, token = args[1], args[2], args[3]
  local headers = {["Content-Type"] = "application/json", ["Authorization"] = "Bearer " .. token}
  requests_ = {}
  for line in io.lines(bodies_file) do
    if #line > 0 then
      table.insert(requests_, wrk.format("POST", path, headers, line))
    end
  end
  if #requests_ == 0 then
    error(bodies_file .. " has no request body (one JSON object per line expected)")
  end
  next_ = math.random(#requests_)
  bad_status = 0
  bad_body = 0
  example = ""
end

function request()
  next_ = next_ % #requests_ + 1
  return requests_[next_]
end

function response(status, headers, body)
  if status ~= 200 then
    bad_status = bad_status + 1
    if example == "" then example = "HTTP " .. status .. ": " .. string.sub(body, 1, 200) end
  elseif not string.find(body, '"decisions":[{', 1, true) then
    bad_body = bad_body + 1
    if example == "" then example = "no decision in the answer: " .. string.sub(body, 1, 200) end
  end
end

local function quote(s)
  return '"' .. string.gsub(string.gsub(s, '\\', '\\\\'), '"', '\\"') .. '"'
end

function done(summary, latency, requests)
  local status, body, example_ = 0, 0, ""
  for _, thread in ipairs(threads) do
    status = status + thread:get("bad_status")
    body = body + thread:get("bad_body")
    if example_ == "" then example_ = thread:get("example") end
  end
  local e = summary.errors
  local fields = {
    '"requests": ' .. summary.requests,
    '"duration_us": ' .. summary.duration,
    '"socket_errors": ' .. (e.connect + e.read + e.write + e.timeout),
    '"bad_status": ' .. status,
    '"bad_body": ' .. body,
    '"p50_us": ' .. latency:percentile(50),
    '"p99_us": ' .. latency:percentile(99),
    '"max_us": ' .. latency.max,
    '"mean_us": ' .. latency.mean,
    '"example": ' .. quote(example_),
  }
  io.write("BENCH_RESULT {" .. table.concat(fields, ", ") .. "}\n")
end
