-- wrk script for bench/bench.py. Arguments (after `--`):
--   1: path of the request body (sent as is)
--   2: auth mode: "none", "key:<raw key>" (one fixed key) or "rotate:<count>:<base>" (key n is
--      sk-bench-%08d, requests rotate over n = base+1 .. base+count, one per request)
-- Every mode builds its requests the same way (one wrk.format per request), so the load generator
-- does the same work whatever the setup. done() prints how many requests each thread issued, so
-- a warm-up can tell how far through the keys it got.
local threads = {}
local body, mode, count, base, fixed_key
counter = 0

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  local f = assert(io.open(args[1], "rb"))
  body = f:read("*a")
  f:close()
  mode = args[2] or "none"
  if mode:sub(1, 4) == "key:" then
    fixed_key = mode:sub(5)
    mode = "key"
  elseif mode:sub(1, 7) == "rotate:" then
    local c, b = mode:match("^rotate:(%d+):(%d+)$")
    count, base = tonumber(c), tonumber(b)
    mode = "rotate"
  end
end

function request()
  counter = counter + 1
  local headers = { ["Content-Type"] = "application/json" }
  if mode == "key" then
    headers["Authorization"] = "Bearer " .. fixed_key
  elseif mode == "rotate" then
    headers["Authorization"] = string.format("Bearer sk-bench-%08d", base + (counter - 1) % count + 1)
  end
  return wrk.format("POST", "/v1/chat/completions", headers, body)
end

function done(summary, latency, requests)
  for _, t in ipairs(threads) do
    io.write(string.format("issued %d\n", t:get("counter")))
  end
end
