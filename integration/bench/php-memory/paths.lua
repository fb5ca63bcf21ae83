-- wrk: cycles through the paths in the file named by PHPMEM_PATHS (one a
-- line), each thread from its own offset, and prints one JSON summary line
-- (latencies in microseconds).
local paths = {}
for line in io.lines(os.getenv("PHPMEM_PATHS")) do
  if line ~= "" then paths[#paths + 1] = line end
end
local n = 0
local counter = 0
setup = function(thread)
  counter = counter + 1
  thread:set("n", counter)
end
request = function()
  n = n + 1
  return wrk.format("GET", paths[(n % #paths) + 1])
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '\nJSON {"requests":%d,"duration_us":%d,"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d,"p50":%d,"p99":%d,"max":%d}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99), latency.max))
end
